"""The line cache: every page is decoded once, its lines written as PNG files, and later epochs and runs
read only those.

A page's folder is named by a hash of the XML bytes, the image bytes and the extraction settings, so an
edited XML (or image) re-extracts that page alone and a change of settings never reuses stale crops.
Its ``lines.json`` (written last, atomically) lists each line's file or why it has none; a folder
without it is an interrupted extraction and is redone. Texts are not cached: they are read from the
XML on every run (cheap), so text options apply without re-extracting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from recognizer.data.base import DataError, generation_lock
from recognizer.data.pages.formats import Page
from recognizer.data.pages.geometry import MISSING_IMAGE, LineGeometryError, crop_line, outline

log = logging.getLogger(__name__)

#: Bump when the extraction code changes what it writes: old cache folders are then ignored.
EXTRACTION_VERSION = 1


@dataclass(frozen=True)
class CachedLine:
    """A line of a cached page: its PNG, or the reason it has none (and a detail for the message)."""

    id: str
    path: Path | None
    reason: str | None = None
    detail: str = ""


def load_page_image(path: Path) -> np.ndarray:
    """The page as grayscale uint8 (H, W); a DataError names an unreadable file."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read page image {path}: {e}; re-export it or remove its XML") from None


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
    """

    def __init__(self, root: str | Path, above: float, below: float, height: int | None = None) -> None:
        self.root = Path(root)
        self.above, self.below, self.height = above, below, height
        # numbers normalised, so that 48 from a YAML file and 48.0 from Python are one cache
        settings = {"above": float(above), "below": float(below), "height": None if height is None else int(height)}
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
            tried = ", ".join(str(p) for p in page.images[:3])
            return [CachedLine(line.id, None, MISSING_IMAGE, f"no image found (tried {tried})") for line in page.lines]
        start = time.perf_counter()
        folder = self.folder(page, image)
        index = folder / "lines.json"
        if not index.is_file():
            with generation_lock(folder):  # parallel jobs: one extracts, the others then read
                if not index.is_file():
                    entries = self._extract(page, image, folder)
                    tmp = index.with_suffix(f".tmp{os.getpid()}")
                    tmp.write_text(json.dumps({"xml": str(page.xml), "lines": entries}), encoding="utf-8")
                    tmp.replace(index)
                    self.extracted += len(page.lines)
                    self.extract_seconds += time.perf_counter() - start
                    return self._read(index, page)
        lines = self._read(index, page)
        self.cached += len(lines)
        self.cached_seconds += time.perf_counter() - start
        return lines

    def _read(self, index: Path, page: Page) -> list[CachedLine]:
        entries = json.loads(index.read_text(encoding="utf-8"))["lines"]
        folder = index.parent
        return [
            CachedLine(e["id"], folder / e["file"] if "file" in e else None, e.get("reason"), e.get("detail", ""))
            for e in entries
        ]

    def _extract(self, page: Page, image: Path, folder: Path) -> list[dict]:
        pixels = load_page_image(image)
        scale = page.scale_to((pixels.shape[1], pixels.shape[0]))
        entries: list[dict] = []
        for n, line in enumerate(page.lines):
            try:
                crop = crop_line(pixels, outline(line, scale, self.above, self.below), self.height)
            except LineGeometryError as e:
                entries.append({"id": line.id, "reason": e.reason, "detail": str(e).split(": ", 1)[-1]})
                continue
            name = f"{n:04d}.png"
            Image.fromarray(crop, mode="L").save(folder / name)
            entries.append({"id": line.id, "file": name})
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
