"""Line images with transcripts: TSV/JSONL manifests and kraken's ``NAME.png`` + ``NAME.gt.txt``.

Images are read as grayscale, optionally inverted so that ink is bright and the background 0
(padding is then background), scaled to ``[0, 1]`` and resized to a fixed height keeping the
aspect ratio. Widths are known from the image headers without decoding, so the pre-flight audit
can check every sample before the first step.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from recognizer.data.base import DataError, RecordDataset, check_unique, read_jsonl
from recognizer.data.batching import SampleKey
from recognizer.data.images.augment import LineAugment

__all__ = ["DataError", "LineDataset", "Record", "read_records"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")


@dataclass(frozen=True)
class Record:
    """One line: a unique id, the image file and its transcript."""

    id: str
    path: Path
    text: str


def read_records(source: str | Path) -> list[Record]:
    """Read a ``.tsv``/``.jsonl`` manifest or a kraken-style folder of ``NAME.png`` + ``NAME.gt.txt``.

    TSV: ``image_path<TAB>transcript`` per line (a first line ``image<TAB>text`` is a header).
    JSONL: one object per line with keys ``image`` and ``text`` (``id`` optional).
    Relative image paths are relative to the manifest's folder.
    """
    source = Path(source)
    if source.is_dir():
        return _read_kraken(source)
    if not source.is_file():
        raise DataError(
            f"manifest {source} does not exist: point the data config at a .tsv or "
            ".jsonl manifest, or at a folder of NAME.png + NAME.gt.txt files"
        )
    if source.suffix == ".tsv":
        records = _read_tsv(source)
    elif source.suffix == ".jsonl":
        records = _read_jsonl(source)
    else:
        raise DataError(f"{source}: unsupported manifest type {source.suffix!r}; use .tsv or .jsonl")
    if not records:
        raise DataError(f"manifest {source} lists no samples")
    check_unique(records, source)
    return records


def _read_tsv(path: Path) -> list[Record]:
    records = []
    with path.open(encoding="utf-8-sig", newline="") as f:  # -sig: tolerate a BOM (Excel)
        for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if lineno == 1 and row[:2] == ["image", "text"]:
                continue
            if len(row) != 2:
                raise DataError(
                    f"{path}:{lineno}: expected 2 tab-separated fields (image, transcript), got {len(row)}: {row!r}"
                )
            records.append(Record(id=row[0], path=path.parent / row[0], text=row[1]))
    return records


def _read_jsonl(path: Path) -> list[Record]:
    def record(obj: dict) -> Record:
        image, text = obj["image"], obj["text"]
        return Record(id=str(obj.get("id", image)), path=path.parent / image, text=text)

    return read_jsonl(path, record, "'image' and 'text'")


def _read_kraken(folder: Path) -> list[Record]:
    records = []
    for gt in sorted(folder.glob("*.gt.txt")):
        stem = gt.name[: -len(".gt.txt")]
        images = [folder / (stem + s) for s in IMAGE_SUFFIXES if (folder / (stem + s)).is_file()]
        if not images:
            raise DataError(f"{gt} has no image beside it: expected {folder / (stem + '.png')}")
        text = gt.read_text(encoding="utf-8").rstrip("\r\n")
        records.append(Record(id=stem, path=images[0], text=text))
    if not records:
        raise DataError(f"folder {folder} has no NAME.gt.txt transcripts (kraken layout)")
    return records


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    if path.suffix == ".npy":
        shape = np.load(path, mmap_mode="r").shape
        if len(shape) != 2:
            raise DataError(f"{path}: expected a 2-D (height, width) array, got shape {shape}")
        return int(shape[1]), int(shape[0])
    with Image.open(path) as im:
        return im.size


def _load_gray(path: Path) -> np.ndarray:
    """Grayscale pixels scaled to [0, 1] (float32, (H, W)); raises DataError naming the file."""
    try:
        if path.suffix == ".npy":
            arr = np.asarray(np.load(path), dtype=np.float32)
        else:
            with Image.open(path) as im:
                if im.mode in ("F", "I", "I;16"):
                    arr = np.asarray(im, dtype=np.float32)
                    if im.mode != "F":
                        arr = arr / 65535.0 if im.mode == "I;16" else arr
                else:
                    arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError, EOFError) as e:  # EOFError: a truncated .npy
        raise DataError(
            f"cannot read image {path}: {e}. Re-export it or remove it from the manifest", "unreadable"
        ) from None
    return arr


class LineDataset(RecordDataset):
    """Line images resized to ``height``; items are ``{"id", "input": (1, H, W), "text"}``.

    Args:
        records: the samples (see :func:`read_records`).
        height: target height in pixels; widths scale with the aspect ratio.
        invert: map dark ink on light paper to bright ink on a 0 background (padding value).
        cache: keep decoded, resized images in memory (uint8) after their first load.
        augment: applied to items asked for by :class:`SampleKey` (the train loader); items asked
            for by a plain index, and :meth:`load`, are never augmented. The cache holds the
            images before augmentation.
    """

    def __init__(
        self,
        records: list[Record],
        height: int,
        invert: bool = True,
        cache: bool = False,
        augment: LineAugment | None = None,
    ):
        self.records = records
        self.height = height
        self.invert = invert
        self.cache = cache
        self.augment = augment
        self._cache: dict[int, np.ndarray] = {}

    def _width(self, index: int) -> int:
        """Sample ``index``'s width after resizing, from its header; a DataError (with a reason) if unusable."""
        r = self.records[index]
        if not r.path.is_file():  # an audit violation like any other: named under error, counted under drop
            raise DataError(
                f"image {r.path} (sample {r.id}) does not exist: fix the path in the manifest (relative paths are "
                "relative to it) or remove the line",
                "missing_file",
            )
        if r.path.stat().st_size == 0:
            raise DataError(
                f"image {r.path} (sample {r.id}) is an empty file (0 bytes): export it again or remove it "
                "from the manifest",
                "empty_input",
            )
        try:
            w, h = _image_size(r.path)
        except (OSError, UnidentifiedImageError, ValueError, EOFError) as e:
            raise DataError(
                f"cannot read image {r.path} (sample {r.id}): {e}. Re-export it or remove it from the manifest",
                "unreadable",
            ) from None
        if w == 0 or h == 0:
            raise DataError(
                f"image {r.path} (sample {r.id}) is empty: {w}x{h} pixels; remove it from the manifest", "empty_input"
            )
        return self._scaled_width(w, h)

    def _scaled_width(self, w: int, h: int) -> int:
        return max(1, round(w * self.height / h)) if h != self.height else w

    def load(self, index: int) -> Tensor:
        """The ``(1, height, W)`` float32 image of sample ``index``, checked to be finite."""
        cached = self._cache.get(index)
        if cached is not None:
            return torch.from_numpy(cached).float().div_(255.0).unsqueeze(0)
        r = self.records[index]
        arr = _load_gray(r.path)
        if not np.isfinite(arr).all():
            n = int((~np.isfinite(arr)).sum())
            raise DataError(
                f"image {r.path} (sample {r.id}) has {n} non-finite pixel value(s) (NaN/Inf): "
                "fix or remove the file; non-finite inputs make the CTC loss NaN",
                "non_finite",
            )
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise DataError(
                f"image {r.path} (sample {r.id}) is empty or not 2-D: {arr.shape}; remove it from the manifest",
                "empty_input",
            )
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"image {r.path} (sample {r.id}) has values in [{lo:g}, {hi:g}]; float images "
                "must hold values in [0, 1]: scale them, or save the image as 8- or 16-bit",
                "out_of_range",
            )
        if self.invert:
            arr = 1.0 - arr
        h, w = arr.shape
        if h != self.height:
            im = Image.fromarray(arr, mode="F").resize(
                (self._scaled_width(w, h), self.height), Image.Resampling.BILINEAR
            )
            arr = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        if self.cache:  # return the cached copy so the first epoch sees the same values as later ones
            self._cache[index] = np.round(arr * 255.0).astype(np.uint8)
            return self.load(index)
        return torch.from_numpy(np.ascontiguousarray(arr)).unsqueeze(0)

    def __getitem__(self, key: int | SampleKey) -> dict:
        """``{"id", "input": (1, height, W'), "text"}``; a :class:`SampleKey` augments (``W' >= W``)."""
        index = key.index if isinstance(key, SampleKey) else key
        r = self.records[index]
        image = self.load(index)
        if isinstance(key, SampleKey) and self.augment is not None:
            image = self.augment(image, key.seed, key.epoch, index)
        return {"id": r.id, "input": image, "text": r.text}
