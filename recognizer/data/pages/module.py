"""The page data module (``recognizer/conf/data/pages.yaml``): ALTO/PAGE pages in, line images out.

Lines are cut once into the line cache (:mod:`recognizer.data.pages.cache`) and then read like any
line image set, by :class:`~recognizer.data.images.lines.LineDataset` (same normalisation and height
scaling as ``data=lines``).
"""

from __future__ import annotations

import logging
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from recognizer.data.base import DataError, SplitData
from recognizer.data.images.augment import LineAugment
from recognizer.data.images.lines import LineDataset, Record
from recognizer.data.pages.cache import LineCache
from recognizer.data.pages.formats import parse_page
from recognizer.data.pages.geometry import NO_TEXT, PAGE_MISFIT, page_misfit
from recognizer.data.pages.sources import collect_xml, split_by_document, split_names

log = logging.getLogger(__name__)

#: Baseline-only lines are cut as a band this many pixels over and under the baseline (recognizer/conf/data/pages.yaml).
BASELINE_ABOVE, BASELINE_BELOW = 48.0, 16.0

Source = str | Sequence[str] | None


def load_char_map(source: str | Path | Mapping[str, str] | None) -> dict[str, str]:
    """A character mapping: a ``from<TAB>to`` file (UTF-8; ``to`` may be empty to delete ``from``) or a
    mapping; keys and values are NFC-normalised. None: no mapping.

    Raises:
        DataError: a missing file or a line without a tab.
    """
    if source is None:
        return {}
    if isinstance(source, Mapping):
        pairs = [(str(k), str(v)) for k, v in source.items()]
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"character mapping file {path} does not exist (data.char_map)")
        pairs = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").split("\n"), 1):
            line = line.removesuffix("\r")
            if not line:
                continue
            if "\t" not in line:
                raise DataError(f"{path}:{lineno}: expected 'from<TAB>to', got {line!r}")
            src, dst = line.split("\t", 1)
            pairs.append((src, dst))
    mapping = {unicodedata.normalize("NFC", k): unicodedata.normalize("NFC", v) for k, v in pairs if k}
    return mapping


def apply_char_map(text: str, mapping: Mapping[str, str]) -> str:
    """Replace every key of ``mapping`` in ``text`` (longest keys first), then NFC and collapse spaces."""
    for src in sorted(mapping, key=len, reverse=True):
        text = text.replace(src, mapping[src])
    return " ".join(unicodedata.normalize("NFC", text).split())


def line_key(xml: Path, line_id: str) -> str:
    """A page line's sample id (``STEM/LINE_ID``): its record id, and what a line split draws."""
    return f"{xml.stem}/{line_id}"


def same_key(key: str, first: Path, xml: Path, line_id: str) -> str:
    """The message for two lines with one sample id (:func:`line_key`): in one file, or in two of one name."""
    if first == xml:
        return (
            f"{xml}: two lines have the id {line_id!r}; a line's sample id is FILE_STEM/LINE_ID: give each its own id"
        )
    return (
        f"{first} and {xml} both give their line {line_id!r} the sample id {key!r} (FILE_STEM/LINE_ID): give pages of "
        "different works different file names (e.g. prefix each with its folder's name)"
    )


class PagesData(SplitData):
    """ALTO/PAGE XML pages with their images (``recognizer/conf/data/pages.yaml``).

    Args:
        train, val, test: per split, a folder, glob, list file or XML file, or a list of them (or None).
        pages: instead of ``train``/``val``/``test``: one set of pages, split by document (or by line).
        split: with ``pages``, the fraction of documents (lines) per split, e.g. ``{train: 0.8, val: 0.1, test: 0.1}``.
        split_seed: seeds the split.
        split_unit: with ``pages``: ``document`` (pages of one document stay in one split: a test of new
            documents) or ``line`` (every line drawn on its own, as ``ketos train -p`` does: val and test
            lines come from pages that are also trained on, which measures a hand already seen).
        document_pattern: regular expression on the XML file stem whose first group names a page's
            document (pages of one document stay in one split); None: each page is a document.
        image_dirs: more folders to look for page images in (relative ones: relative to each XML's folder).
        allow_outside_images: follow image paths the XML names even when their real path (symlinks
            resolved) lies outside the XML's folder and ``image_dirs``; off by default, so an XML file
            cannot make training read ``../../etc/passwd`` or another user's scan. Turn it on only for
            files you trust (:func:`~recognizer.data.pages.formats.image_candidates`).
        cache_dir: the line cache folder.
        text_index: PAGE: which ``TextEquiv/@index`` to read (None: the first).
        hyphen: ALTO: a line-end ``HYP`` becomes this string (None: its ``CONTENT`` as written).
        char_map: a ``from<TAB>to`` file or a mapping applied to every transcript (stored in the checkpoint).
        baseline_above, baseline_below: baseline-only lines: band height over and under the baseline (pixels).
        extract_height: store cached crops at this height (None: the scan's resolution).
        deskew: turn each line whose baseline slopes (0.5-45 degrees) level before cutting it, so the crop holds
            the writing rather than its slope (:func:`~recognizer.data.pages.geometry.baseline_angle`).
        audit_policy: lines without text or usable geometry, or whose image is missing: ``error`` (stop,
            naming the XML file and line id) or ``drop`` (skip, counted by reason). None means ``error``.
        height, invert, cache: as in :class:`~recognizer.data.images.modules.LinesData`.
        alphabet, batch_size, num_workers, pin_memory, persistent_workers: as in :class:`SplitData`.
        augment: augmentation of the train split's lines (``data.augment``; used only if enabled).
    """

    def __init__(
        self,
        train: Source = None,
        val: Source = None,
        test: Source = None,
        pages: Source = None,
        split: Mapping[str, float] | None = None,
        split_seed: int = 0,
        split_unit: str = "document",
        document_pattern: str | None = None,
        image_dirs: Sequence[str] = (),
        allow_outside_images: bool = False,
        cache_dir: str = "data/page_lines",
        text_index: int | None = None,
        hyphen: str | None = None,
        char_map: str | Mapping[str, str] | None = None,
        baseline_above: float = BASELINE_ABOVE,
        baseline_below: float = BASELINE_BELOW,
        extract_height: int | None = None,
        deskew: bool = False,
        audit_policy: str | None = "error",
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
        if pages is not None and any(s is not None for s in (train, val, test)):
            raise DataError("set either data.pages (one set, split by document) or data.train/val/test, not both")
        self.split = {k: float(v) for k, v in (split or {"train": 0.8, "val": 0.1, "test": 0.1}).items()}
        if pages is not None and not set(self.split) <= {"train", "val", "test"}:
            raise DataError(f"data.split names splits {sorted(self.split)}; use train, val and test")
        sources = {"train": train, "val": val, "test": test}
        if pages is not None:
            sources = {s: pages if self.split.get(s, 0) > 0 else None for s in ("train", "val", "test")}
        super().__init__(sources, alphabet, batch_size, num_workers, pin_memory, persistent_workers)
        if split_unit not in ("document", "line"):
            raise DataError(f"data.split_unit must be document or line, got {split_unit!r}")
        if split_unit == "line" and pages is None:
            raise DataError("data.split_unit=line splits data.pages; with data.train/val/test the splits are given")
        if audit_policy not in (None, "error", "drop"):
            raise ValueError(f"data.audit_policy must be error or drop, got {audit_policy!r}")
        self.pages = pages
        self.split_seed = split_seed
        self.split_unit = split_unit
        self.augment = augment if augment is not None and augment.enabled else None
        self.document_pattern = document_pattern
        self.image_dirs = list(image_dirs)
        self.allow_outside_images = bool(allow_outside_images)
        self.text_index, self.hyphen = text_index, hyphen
        self.char_map = load_char_map(char_map)
        self.line_cache = LineCache(cache_dir, baseline_above, baseline_below, extract_height, deskew)
        self.audit_policy = audit_policy or "error"
        self.height, self.invert, self.cache = height, invert, cache
        self.drops: dict[str, Counter[str]] = {}
        self._files: dict[str, list[Path]] | None = None

    def files(self, split: str) -> list[Path]:
        """The XML files ``split`` reads (for ``pages``: its documents' share; with ``split_unit=line``: all)."""
        if self._files is None:
            if self.pages is not None and self.split_unit == "line":
                every = collect_xml(self.pages)
                self._files = {s: every for s, f in self.split.items() if f > 0}
                log.info("pages split by line (seed %d): %d pages", self.split_seed, len(every))
            elif self.pages is not None:
                self._files = split_by_document(
                    collect_xml(self.pages), self.split, self.split_seed, self.document_pattern
                )
                log.info(
                    "pages split by document (seed %d): %s",
                    self.split_seed,
                    ", ".join(f"{s} {len(f)} pages" for s, f in self._files.items()),
                )
            else:
                self._files = {s: collect_xml(src) for s, src in self.sources.items() if src is not None}
        if split not in self._files:
            raise DataError(f"no {split} pages configured: set data.{split}=PATH (a folder, glob or list of XML files)")
        return self._files[split]

    def records(self, split: str) -> list[Record]:
        """The kept lines of ``split`` as line-image records (extracting pages not yet cached)."""
        records: list[Record] = []
        origin: dict[str, Path] = {}  # sample id → its page file, for a clear message where two lines share one
        drops: Counter[str] = Counter()
        examples: dict[str, str] = {}
        files = self.files(split)
        self.line_cache.reset_counters()
        pages = [
            parse_page(xml, self.text_index, self.hyphen, self.image_dirs, self.allow_outside_images) for xml in files
        ]
        keep = None
        if self.split_unit == "line":  # every line of every page is drawn, dropped ones too: the audit moves none
            keys = [line_key(xml, line.id) for xml, page in zip(files, pages) for line in page.lines]
            keep = set(split_names(keys, self.split, self.split_seed, "line")[split])
        for xml, page in zip(files, pages):
            lines = list(zip(page.lines, self.line_cache.lines(page)))
            misfit = page_misfit(page, [cached.reason for _, cached in lines])
            for line, cached in lines:
                if keep is not None and line_key(xml, line.id) not in keep:
                    continue
                reason, detail = cached.reason, cached.detail
                if reason is None and not line.text:
                    reason, detail = NO_TEXT, "no TextEquiv/Unicode or String text" if line.text is None else "empty"
                if misfit is not None:
                    reason, detail = PAGE_MISFIT, misfit
                if reason is not None:
                    where = f"{xml}: line {line.id}: {reason} ({detail})"
                    if self.audit_policy == "error":
                        raise DataError(
                            f"{where}. Fix the XML or the image, or set stability.audit_policy=drop "
                            "(recognizer-eval: audit_policy=drop) to skip such lines (they are counted by reason "
                            "in the log)"
                        )
                    drops[reason] += 1
                    examples.setdefault(reason, where)
                    continue
                assert cached.path is not None and line.text is not None
                text = apply_char_map(line.text, self.char_map)
                key = line_key(xml, line.id)
                if key in origin:
                    raise DataError(same_key(key, origin[key], xml, line.id))
                origin[key] = xml
                records.append(Record(key, cached.path, text))
        self.drops[split] = drops
        dropped = ", ".join(f"{r}: {n}" for r, n in drops.most_common())
        log.info(
            "%s: %d pages, %d lines%s; %s",
            split,
            len(files),
            len(records),
            f", dropped {sum(drops.values())} ({dropped})" if drops else "",
            self.line_cache.throughput(),
        )
        for example in examples.values():
            log.info("  e.g. %s", example)
        if not records:
            raise DataError(f"the {split} pages ({len(files)} XML files) hold no usable line")
        return records

    def dataset(self, split: str) -> LineDataset:
        """The lines of ``split``; only the train split carries the augmentation (the train loader applies it)."""
        augment = self.augment if split == "train" else None
        return LineDataset(self.records(split), self.height, invert=self.invert, cache=self.cache, augment=augment)
