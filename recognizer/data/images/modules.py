"""Data modules: built by Hydra from ``recognizer/conf/data/*.yaml``, they hand out the datasets of each split."""

from __future__ import annotations

from pathlib import Path

from recognizer.data.base import SplitData
from recognizer.data.images.augment import LineAugment
from recognizer.data.images.digit_lines import ensure_digit_lines
from recognizer.data.images.lines import DataError, LineDataset, read_records


class LinesData(SplitData):
    """A user's line images (``recognizer/conf/data/lines.yaml``).

    Args:
        train, val, test: a ``.tsv``/``.jsonl`` manifest or a kraken folder per split (or None).
        height: images are resized to this height, keeping the aspect ratio.
        invert: dark ink on light paper (True) or light ink on dark (False).
        cache: keep decoded images in memory after their first load.
        alphabet: optional alphabet file (one symbol per line); default: the train transcripts.
        batch_size, num_workers, pin_memory, persistent_workers: loader settings (:class:`SplitData`).
        augment: augmentation of the train split's lines (used only if ``augment.enabled``), or None.
    """

    def __init__(
        self,
        train: str | None,
        val: str | None,
        test: str | None = None,
        height: int = 64,
        invert: bool = True,
        cache: bool = False,
        alphabet: str | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        augment: LineAugment | None = None,
    ) -> None:
        sources = {"train": train, "val": val, "test": test}
        super().__init__(sources, alphabet, batch_size, num_workers, pin_memory, persistent_workers)
        self.height = height
        self.invert = invert
        self.cache = cache
        self.augment = augment if augment is not None and augment.enabled else None

    def dataset(self, split: str) -> LineDataset:
        """The lines of ``split``; only the train split carries the augmentation (the train loader applies it)."""
        source = self.sources.get(split)
        if source is None:
            raise DataError(f"no {split} data configured: set data.{split}=PATH (a manifest or folder)")
        augment = self.augment if split == "train" else None
        return LineDataset(read_records(source), self.height, invert=self.invert, cache=self.cache, augment=augment)


class DigitLinesData(LinesData):
    """Embedded lines of real handwritten digits, generated into ``root`` on first use.

    Args:
        root: cache folder (``${paths.data_dir}/digit_lines``).
        num_train, num_val, num_test: lines per split.
        max_digits: each line holds 1..max_digits digits.
        height: line height in pixels.
        seed: generation seed (pools and lines).
        cache, batch_size, num_workers, pin_memory, persistent_workers, augment: as in :class:`LinesData`.
    """

    def __init__(
        self,
        root: str,
        num_train: int = 10000,
        num_val: int = 1000,
        num_test: int = 1000,
        max_digits: int = 8,
        height: int = 16,
        seed: int = 0,
        cache: bool = True,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        augment: LineAugment | None = None,
    ) -> None:
        super().__init__(
            None,
            None,
            None,
            height=height,
            invert=True,
            cache=cache,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            augment=augment,
        )
        self.root = Path(root)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.max_digits = max_digits
        self.seed = seed

    def has(self, split: str) -> bool:
        return self.sizes.get(split, 0) > 0

    def dataset(self, split: str) -> LineDataset:
        if not self.sources["train"]:  # generate lazily: instantiating the config stays cheap
            manifests = ensure_digit_lines(self.root, self.sizes, self.max_digits, self.height, self.seed)
            self.sources.update({k: str(v) for k, v in manifests.items()})
        return super().dataset(split)
