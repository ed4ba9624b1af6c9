"""What every data set and data module shares, whatever the modality."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from recognizer.alphabet import Alphabet


class RecordDataset(Dataset):
    """A dataset over ``records`` that each carry an ``id`` and a ``text``.

    Subclasses set ``self.records`` and provide ``widths`` (input lengths along the padded axis,
    known without decoding) and ``load(i)``; the audit and the loaders rely on exactly these.
    """

    records: Sequence[Any]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self.records]


class SplitData:
    """A data module's common part: a source per split, an optional alphabet file, loader settings.

    Args:
        sources: split name → where its data is (a manifest, a folder, ...), or None.
        alphabet: optional alphabet file (one symbol per line); None = build it from the train text.
        batch_size, num_workers, pin_memory: loader settings.
    """

    def __init__(
        self,
        sources: dict[str, Any],
        alphabet: str | None,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
    ) -> None:
        self.sources = sources
        self.alphabet_file = alphabet
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def has(self, split: str) -> bool:
        return self.sources.get(split) is not None

    def alphabet(self) -> Alphabet | None:
        """The configured alphabet file, or None to build one from the train transcripts."""
        return Alphabet.from_file(self.alphabet_file) if self.alphabet_file else None
