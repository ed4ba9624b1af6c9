"""Line images with transcripts: TSV/JSONL manifests and kraken's ``NAME.png`` + ``NAME.gt.txt``.

Images are read as grayscale, optionally inverted so that ink is bright and the background 0
(padding is then background), scaled to ``[0, 1]`` and resized to a fixed height keeping the
aspect ratio. Widths are known from the image headers without decoding, so the pre-flight audit
can check every sample before the first step. A header that promises more than
:data:`MAX_IMAGE_PIXELS` pixels is refused before any pixel is decoded (:func:`open_image`).
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from recognizer.data.base import DataError, RecordDataset, check_unique, read_jsonl
from recognizer.data.batching import SampleKey
from recognizer.data.images.augment import LineAugment

__all__ = ["MAX_IMAGE_PIXELS", "DataError", "LineDataset", "Record", "open_image", "read_records"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")

#: The formats Pillow may read (by content, whatever the file's name): raster formats decoded in-process.
#: Any other is refused: Pillow would start Ghostscript for PostScript (EPS) named ``line.png``.
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "JPEG2000", "PPM", "GIF", "WEBP")  # JPEG covers MPO, PPM PGM/PBM

#: The largest image, in pixels (width × height), that recognizer decodes: line images and page scans.
#: A header that promises more is refused before any pixel is decoded: a few kilobytes of PNG can announce
#: 30000 × 30000 pixels and inflate to gigabytes (a decompression bomb). The default is PIL's own warning
#: threshold (about 89.5 million pixels, 0.25 GiB as 8-bit RGB), far above any line and most page scans.
#: A genuine larger scan: set the environment variable :data:`MAX_PIXELS_ENV` (read at every check), or
#: this constant from Python.
MAX_IMAGE_PIXELS = 89_478_485
MAX_PIXELS_ENV = "RECOGNIZER_MAX_IMAGE_PIXELS"
_PIL_LOCK = threading.Lock()  # guards the rare scoped raise of PIL's global limit (see _pil_allows)


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


def max_image_pixels() -> int:
    """The pixel limit in force: ``$RECOGNIZER_MAX_IMAGE_PIXELS`` if set, else :data:`MAX_IMAGE_PIXELS`."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not value:
        return MAX_IMAGE_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r}: expected a positive number of pixels")
    return int(value)


def too_large(
    path: Path,
    pixels: int,
    limit: int,
    size: tuple[int, int] | None = None,
    what: str = "image",
    sample: str | None = None,
) -> DataError:
    """The error for an image whose header promises more than ``limit`` pixels (reason ``too_large``)."""
    dims = f"{size[0]}x{size[1]} = {pixels:,} pixels" if size else f"{pixels:,} pixels"
    name = f"{what} {path}" + (f" (sample {sample})" if sample is not None else "")
    return DataError(
        f"{name} is {dims}, over the limit of {limit:,} pixels: refused before decoding (a decompression "
        f"bomb, or a scan far larger than needed). If it is a genuine scan, downscale it, or raise the limit with "
        f"the environment variable {MAX_PIXELS_ENV}={pixels} (recognizer.data.images.lines.MAX_IMAGE_PIXELS from "
        "Python)",
        "too_large",
    )


@contextlib.contextmanager
def _pil_allows(limit: int) -> Iterator[None]:
    """Let PIL open images of up to ``limit`` pixels while inside.

    PIL refuses images over twice its global ``Image.MAX_IMAGE_PIXELS`` (and warns over it) when it opens
    them. Our own limit is checked on the header size, so PIL's global is left alone unless a user raised
    our limit above it; then it is raised for this open only, under a lock, and restored after.
    """
    pil = Image.MAX_IMAGE_PIXELS
    if pil is None or limit <= pil:
        yield
        return
    with _PIL_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limit if saved is not None else None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def open_image(path: Path, what: str = "image", limit: int | None = None, sample: str | None = None) -> Image.Image:
    """``Image.open(path)`` (lazy: nothing decoded yet) of the :data:`IMAGE_FORMATS` only, refused when its header
    promises too many pixels.

    Args:
        path: the image file.
        what: how messages name it (``image``, ``page image``).
        limit: the pixel limit (None: :func:`max_image_pixels`).
        sample: the id of the sample it belongs to, named in the message (None: none).

    Raises:
        DataError: reason ``too_large``: width × height above :func:`max_image_pixels`, naming the file,
            its size, the limit and how to raise it.
        OSError, UnidentifiedImageError, ValueError: as PIL raises them for a file it cannot read (or of another
            format: UnidentifiedImageError, naming the formats read).
    """
    limit = max_image_pixels() if limit is None else limit
    try:
        with _pil_allows(limit):
            im = Image.open(path, formats=IMAGE_FORMATS)
    except UnidentifiedImageError as e:
        raise UnidentifiedImageError(f"{e} (recognizer reads {', '.join(IMAGE_FORMATS)} images only)") from None
    except Image.DecompressionBombError as e:  # over PIL's own hard limit: its message holds the pixel count
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise too_large(path, int(found.group(1)) if found else limit + 1, limit, None, what, sample) from None
    w, h = im.size
    if w * h > limit:
        im.close()
        raise too_large(path, w * h, limit, (w, h), what, sample)
    return im


#: Pillow's modes of integer images deeper than 8 bits (16-bit PNG and TIFF open as ``I;16``; ``I`` is 32-bit)
DEEP_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def on_paper(im: Image.Image) -> Image.Image:
    """``im`` with its transparent parts white, as paper: Pillow's conversions drop the alpha channel, and what
    lies under it (black, in most exports of cut-out lines) would become the background."""
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    return im


def gray_pixels(im: Image.Image) -> np.ndarray:
    """Grayscale float32 (H, W): 8- and 16-bit images scaled by their depth to [0, 1], float images as they are,
    transparent parts white (:func:`on_paper`). 32-bit integer images are divided by 65,535 like 16-bit ones and
    are not clipped: values outside [0, 1] (from floats or such images) are the audit's to name (``out_of_range``).

    Pillow's own conversion of a 16-bit image to 8 bits (``convert("L")``) clips instead of scaling: paper at
    50,000 and ink at 8,000 both become 255, a blank page.
    """
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)
    if im.mode in DEEP_INTEGER_MODES:
        return np.asarray(im, dtype=np.float32) / 65535.0
    return np.asarray(on_paper(im).convert("L"), dtype=np.float32) / 255.0


def _image_size(path: Path, limit: int | None = None, sample: str | None = None) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels (a DataError above the pixel limit)."""
    limit = max_image_pixels() if limit is None else limit
    if path.suffix == ".npy":
        shape = np.load(path, mmap_mode="r").shape
        if len(shape) != 2:
            raise DataError(f"{path}: expected a 2-D (height, width) array, got shape {shape}")
        if shape[0] * shape[1] > limit:
            raise too_large(path, int(shape[0] * shape[1]), limit, (int(shape[1]), int(shape[0])), sample=sample)
        return int(shape[1]), int(shape[0])
    with open_image(path, limit=limit, sample=sample) as im:
        return im.size


def _load_gray(path: Path, sample: str | None = None) -> np.ndarray:
    """Grayscale pixels scaled to [0, 1] (float32, (H, W)); raises DataError naming the file."""
    limit = max_image_pixels()
    try:
        if path.suffix == ".npy":
            arr = np.asarray(np.load(path), dtype=np.float32)
        else:
            with open_image(path, limit=limit, sample=sample) as im:  # the size is checked before decoding
                arr = gray_pixels(im)
    except DataError:  # too many pixels: already names the file, the limit and the fix
        raise
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
        limit = max_image_pixels()  # outside the try: a bad RECOGNIZER_MAX_IMAGE_PIXELS is a config error
        try:
            w, h = _image_size(r.path, limit, r.id)
        except DataError:  # too many pixels (a decompression bomb): names the file, sample, limit and fix
            raise
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
        arr = _load_gray(r.path, r.id)
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
