"""The line cache: every page is decoded once, its lines written as PNG files, and later epochs and runs
read only those.

A page's folder is named by a hash of the XML bytes, the image bytes and the extraction settings, so an
edited XML (or image) re-extracts that page alone and a change of settings never reuses stale crops.
Its ``lines.json`` (written last, atomically) lists each line's file, with its size and hash, or why it
has none; a folder without it is an interrupted extraction and is redone. Every file is written to a
temporary name, synced to disk and renamed, and the folder synced, so a power loss leaves old or new
files, never half of one. Each use of a cached page checks its crops' sizes and hashes: a crop that is
missing, truncated or changed (or an index that cannot be read) is logged and the page extracted again.
Texts are not cached: they are read from the XML on every run (cheap), so text options apply without
re-extracting.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from recognizer.data.base import DataError, generation_lock
from recognizer.data.images.lines import DEEP_INTEGER_MODES, gray_pixels, on_paper, open_image
from recognizer.data.pages.formats import Page
from recognizer.data.pages.geometry import (
    MISSING_IMAGE,
    REFUSED_IMAGE,
    LineGeometryError,
    baseline_angle,
    crop_line,
    outline,
)
from recognizer.files import fsync_dir, write_atomic

log = logging.getLogger(__name__)

#: Bump when the extraction code changes what it writes: old cache folders are then ignored.
#: 2: crops written durably with their size and hash in lines.json; bow-tie outlines are cut, not degenerate.
#: 3: 16-bit and float scans scaled by their depth (not clipped to white), transparent parts read as paper.
EXTRACTION_VERSION = 3


@dataclass(frozen=True)
class CachedLine:
    """A line of a cached page: its PNG, or the reason it has none (and a detail for the message)."""

    id: str
    path: Path | None
    reason: str | None = None
    detail: str = ""


def load_page_image(path: Path) -> np.ndarray:
    """The page as grayscale uint8 (H, W); a DataError names an unreadable file, or one whose header
    promises more pixels than :data:`recognizer.data.images.lines.MAX_IMAGE_PIXELS` (never decoded)."""
    try:
        with open_image(path, "page image") as im:
            if im.mode in DEEP_INTEGER_MODES or im.mode == "F":  # scaled, not clipped by convert("L")
                return _deep_to_uint8(path, im)
            return np.asarray(on_paper(im).convert("L"))
    except DataError:  # too many pixels: names the file, the limit and how to raise it
        raise
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read page image {path}: {e}; re-export it or remove its XML") from None


def _deep_to_uint8(path: Path, im: Image.Image) -> np.ndarray:
    """A 16-bit or float scan as uint8, scaled by its depth; a float scan holds [0, 1] or, as some exports
    write it, [0, 255] (told apart by its largest value). Others are refused naming the file."""
    gray = gray_pixels(im)
    if im.mode == "F":
        finite = bool(np.isfinite(gray).all())
        lo, hi = (float(gray.min()), float(gray.max())) if finite else (math.nan, math.nan)
        if not (finite and lo >= 0.0 and hi <= 255.0):
            raise DataError(
                f"page image {path}: a float image must hold values in [0, 1] or [0, 255], this one holds "
                f"{np.nanmin(gray):g}..{np.nanmax(gray):g}; re-export it as an 8- or 16-bit image"
            )
        gray = gray / 255.0 if hi > 1.0 else gray
    return np.round(np.clip(gray, 0.0, 1.0) * 255.0).astype(np.uint8)


def _file_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _untrusted(folder: Path, entries: Any) -> str | None:
    """Why a cached page's entries cannot be used (a crop missing, truncated or changed), or None."""
    if not isinstance(entries, list):
        return "its index lists no lines"
    for e in entries:
        if not isinstance(e, dict) or "id" not in e:
            return "its index holds an entry without a line id"
        if "file" not in e:
            continue
        path = folder / str(e["file"])
        if not isinstance(e.get("size"), int) or not isinstance(e.get("hash"), str):
            return f"{path} (line {e['id']}) has no size and hash in the index"
        try:
            data = path.read_bytes()
        except OSError as err:
            return f"{path} (line {e['id']}) cannot be read ({err.strerror or err})"
        if len(data) != e["size"]:
            return f"{path} (line {e['id']}) is {len(data)} bytes, the index says {e['size']} (truncated or replaced)"
        if _file_hash(data) != e["hash"]:
            return f"{path} (line {e['id']}) does not match its hash in the index (changed on disk)"
    return None


def _digest(*paths: Path, extra: str = "") -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in paths:
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")  # a boundary, so that moving bytes between files changes the key
    h.update(extra.encode())
    return h.hexdigest()


class LineCache:
    """Line images of pages, extracted once into ``root``.

    Args:
        root: the cache folder (shared by all runs; safe for parallel jobs).
        above, below: the band around a baseline-only line, in pixels over and under it.
        height: store crops scaled to this height (None: the scan's resolution).
        deskew: turn each line whose baseline slopes level before cutting it (:func:`baseline_angle`).
    """

    def __init__(
        self, root: str | Path, above: float, below: float, height: int | None = None, deskew: bool = False
    ) -> None:
        self.root = Path(root)
        self.above, self.below, self.height, self.deskew = above, below, height, bool(deskew)
        # numbers normalised, so that 48 from a YAML file and 48.0 from Python are one cache
        settings: dict[str, Any] = {
            "above": float(above),
            "below": float(below),
            "height": None if height is None else int(height),
        }
        if self.deskew:  # only when on: caches cut before the option existed keep their keys
            settings["deskew"] = True
        self.settings = json.dumps({"version": EXTRACTION_VERSION, **settings}, sort_keys=True)
        self.reset_counters()

    def reset_counters(self) -> None:
        """Start counting lines (and seconds) extracted and read from the cache anew."""
        self.extracted = 0
        self.extract_seconds = 0.0
        self.cached = 0
        self.cached_seconds = 0.0

    def folder(self, page: Page, image: Path) -> Path:
        key = _digest(page.xml, image, extra=self.settings)
        return self.root / key[:2] / key

    def lines(self, page: Page) -> list[CachedLine]:
        """One :class:`CachedLine` per line of ``page``, in order; extracts the page on first use."""
        image = page.image
        if image is None:
            reason = MISSING_IMAGE if page.refused is None else REFUSED_IMAGE
            detail = f"no image found ({page.missing_image()})"
            return [CachedLine(line.id, None, reason, detail) for line in page.lines]
        start = time.perf_counter()
        folder = self.folder(page, image)
        index = folder / "lines.json"
        entries = self._trusted(index, page) if index.is_file() else None
        if entries is None:
            with generation_lock(folder):  # parallel jobs: one extracts, the others then read
                entries = self._trusted(index, page, log_problem=False) if index.is_file() else None
                if entries is None:
                    entries = self._extract(page, image, folder)
                    payload = json.dumps({"xml": str(page.xml), "lines": entries}).encode("utf-8")
                    write_atomic(index, payload)  # last: its presence marks the page's crops complete
                    fsync_dir(folder)
                    self.extracted += len(page.lines)
                    self.extract_seconds += time.perf_counter() - start
                    return self._lines(folder, entries)
        lines = self._lines(folder, entries)
        self.cached += len(lines)
        self.cached_seconds += time.perf_counter() - start
        return lines

    def _trusted(self, index: Path, page: Page, log_problem: bool = True) -> list[dict] | None:
        """The entries of ``index`` if every crop they list is as extracted (size and hash); else None (logged)."""
        try:
            entries = json.loads(index.read_text(encoding="utf-8"))["lines"]
        except (OSError, ValueError, KeyError, TypeError) as e:  # ValueError: JSON or UTF-8 damaged
            problem: str | None = f"its index {index} cannot be read ({e})"
        else:
            problem = _untrusted(index.parent, entries)
        if problem is None:
            return entries
        if log_problem:
            log.warning("line cache: %s: extracting page %s again", problem, page.xml)
        return None

    @staticmethod
    def _lines(folder: Path, entries: list[dict]) -> list[CachedLine]:
        return [
            CachedLine(e["id"], folder / e["file"] if "file" in e else None, e.get("reason"), e.get("detail", ""))
            for e in entries
        ]

    def _extract(self, page: Page, image: Path, folder: Path) -> list[dict]:
        """Cut every line of ``page`` into ``folder`` (each crop written durably); the index entries."""
        pixels = load_page_image(image)
        scale = page.scale_to((pixels.shape[1], pixels.shape[0]))
        entries: list[dict] = []
        for n, line in enumerate(page.lines):
            try:
                angle = baseline_angle(line, scale) if self.deskew else 0.0
                crop = crop_line(pixels, outline(line, scale, self.above, self.below), self.height, angle)
            except LineGeometryError as e:
                entries.append({"id": line.id, "reason": e.reason, "detail": str(e).split(": ", 1)[-1]})
                continue
            name = f"{n:04d}.png"
            buffer = io.BytesIO()
            Image.fromarray(crop, mode="L").save(buffer, format="PNG")
            data = buffer.getvalue()
            write_atomic(folder / name, data)
            entries.append({"id": line.id, "file": name, "size": len(data), "hash": _file_hash(data)})
        fsync_dir(folder)  # the crops' renames are on disk before the index that lists them
        return entries

    def throughput(self) -> str:
        """``extracted N lines at X lines/s; M cached lines at Y lines/s`` for the log."""
        parts = []
        if self.extracted:
            parts.append(f"extracted {self.extracted} lines at {self.extracted / self.extract_seconds:.0f} lines/s")
        if self.cached:
            parts.append(
                f"{self.cached} lines from the cache at {self.cached / max(self.cached_seconds, 1e-9):.0f} lines/s"
            )
        return "; ".join(parts) or "no lines"
