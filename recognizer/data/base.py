"""What every data set and data module shares, whatever the modality."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from torch.utils.data import Dataset

from recognizer.alphabet import Alphabet
from recognizer.files import write_atomic

if TYPE_CHECKING:
    from recognizer.data.batching import Batch

T = TypeVar("T")


class DataError(ValueError):
    """Bad input data; the message names the file or sample and the fix.

    Args:
        message: what is wrong, with the file or sample and the fix.
        reason: for a problem of one sample's input, the audit's reason code (``unreadable``,
            ``empty_input``, ``truncated``, ``silent``, ``wrong_rate``, ``missing_file``,
            ``out_of_range``, ``non_finite``, ``too_large``; see :data:`recognizer.stability.audit.FIXES`): the
            pre-flight audit then drops and counts the sample under ``stability.audit_policy=drop``
            instead of stopping. None for errors of a whole manifest or configuration.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


def check_unique(records: Sequence[Any], source: str | Path) -> None:
    """Raise :class:`DataError` if two records of ``source`` share an id."""
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise DataError(f"{source}: sample id {r.id!r} appears twice; ids must be unique")
        seen.add(r.id)


def read_jsonl(path: Path, parse: Callable[[dict], T], expected: str) -> list[T]:
    """Parse every non-empty line of a JSONL manifest with ``parse``.

    A line that is not JSON, or that ``parse`` cannot read, is a :class:`DataError` naming
    ``path:line`` and ``expected`` (e.g. ``"'image' and 'text'"``). A BOM is accepted.
    """
    rows = []
    with path.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(parse(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
                raise DataError(f"{path}:{lineno}: expected a JSON object with {expected} ({e})") from None
    return rows


@contextlib.contextmanager
def generation_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.lock`` while a cache is generated.

    Parallel jobs of a sweep (joblib, submitit) or DDP ranks that start on an empty cache then
    generate it once: the first takes the lock and generates, the others wait and find the
    manifests written. An advisory ``flock`` (POSIX); elsewhere no lock is taken.
    """
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        yield
        return
    with (folder / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_manifest(path: Path, rows: Sequence[str]) -> Path:
    """Write a manifest atomically (temp file + rename): its presence marks a finished split."""
    write_atomic(path, ("\n".join(rows) + "\n").encode("utf-8"))
    return path


class RecordDataset(Dataset):
    """A dataset over ``records`` that each carry an ``id`` and a ``text``.

    Subclasses set ``self.records`` and provide ``_width(i)`` (sample ``i``'s input length along
    the padded axis, read from its header without decoding; a :class:`DataError` with a reason
    when the header says the input is unusable) and ``load(i)``. The audit reads
    ``header_widths`` and ``unreadable`` and loads every kept input once; the loaders rely on
    ``header_widths`` and ``load``. A subclass that augments per sample sets ``self.augment`` (applied
    to items asked for by a :class:`~recognizer.data.batching.SampleKey`).
    """

    records: Sequence[Any]
    augment: Any = None  # the per-sample augmentation of the train split, or None
    _widths: list[int] | None = None
    _unreadable: dict[int, DataError]
    #: samples a reader's filter removed before the audit (reason → count, e.g. ``{"duration": 3}``)
    filtered: Mapping[str, int] = MappingProxyType({})

    def __len__(self) -> int:
        return len(self.records)

    def _width(self, index: int) -> int:
        raise NotImplementedError

    def _probe(self) -> list[int]:
        """Read every header once: widths (0 where unreadable) and the errors of unreadable samples."""
        if self._widths is None:
            widths, unreadable = [], {}
            for i in range(len(self.records)):
                try:
                    widths.append(self._width(i))
                except DataError as e:  # one bad file is the audit's business, not a reason to stop here
                    widths.append(0)
                    unreadable[i] = e
            self._widths, self._unreadable = widths, unreadable
        return self._widths

    @property
    def widths(self) -> list[int]:
        """Input width of every sample, from the headers (cached); raises the first unreadable sample's DataError."""
        widths = self._probe()
        for error in self._unreadable.values():
            raise DataError(str(error), error.reason)
        return widths

    @property
    def header_widths(self) -> list[int]:
        """Like ``widths``, but 0 for the samples in ``unreadable`` instead of raising (the audit drops them)."""
        return self._probe()

    @property
    def unreadable(self) -> dict[int, DataError]:
        """Samples whose header says their input cannot be used: index → the error naming the file and fix."""
        self._probe()
        return self._unreadable

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self.records]

    def map_texts(self, fn: Callable[[str], str]) -> int:
        """Replace every record's transcript by ``fn(transcript)``; returns how many changed.

        Records are dataclasses (frozen ones too): each changed one is replaced by a copy.
        """
        changed = 0
        records = list(self.records)
        for i, r in enumerate(records):
            text = fn(r.text)
            if text != r.text:
                records[i] = dataclasses.replace(r, text=text)
                changed += 1
        if changed:
            self.records = records
        return changed

    @property
    def augmented(self) -> bool:
        """Whether items asked for by a :class:`~recognizer.data.batching.SampleKey` are augmented
        (the train loader then yields such keys)."""
        return self.augment is not None


class SplitData:
    """A data module's common part: a source per split, an optional alphabet file, loader settings.

    Args:
        sources: split name → where its data is (a manifest, a folder, ...), or None.
        alphabet: optional alphabet file (one symbol per line); None = build it from the train text.
        batch_size, num_workers, pin_memory: loader settings.
        persistent_workers: keep the worker processes (and what they cached) alive between epochs;
            applies only when ``num_workers > 0``. False frees their memory at every epoch end.
    """

    def __init__(
        self,
        sources: dict[str, Any],
        alphabet: str | None,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool = True,
    ) -> None:
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need data.batch_size >= 1 and data.num_workers >= 0, got {batch_size}, {num_workers}")
        self.sources = sources
        self.alphabet_file = alphabet
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        #: A character mapping applied to every transcript (stored in checkpoints; empty: none).
        self.char_map: dict[str, str] = {}

    def has(self, split: str) -> bool:
        return self.sources.get(split) is not None

    def dataset(self, split: str) -> Any:
        """The dataset of ``split`` (a ``LineDataset`` or an ``AudioDataset``): each data module reads its own."""
        raise NotImplementedError(f"{type(self).__name__} does not read splits")

    def loader_options(self) -> dict[str, Any]:
        """The DataLoader settings of this config, as keyword arguments of :func:`make_loader`."""
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers,
        }

    @property
    def train_augment(self) -> Callable[[Batch], Batch] | None:
        """Augmentation the training loop applies to each train batch in the main process (None: none)."""
        return None

    def alphabet(self) -> Alphabet | None:
        """The configured alphabet file, or None to build one from the train transcripts."""
        return Alphabet.from_file(self.alphabet_file) if self.alphabet_file else None
