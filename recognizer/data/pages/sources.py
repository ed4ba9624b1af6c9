"""Which XML files make a split: a folder, a glob, a list file or one XML file; and the split of one set
of pages into train/val/test by document."""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from recognizer.data.base import DataError

__all__ = ["collect_xml", "split_by_document"]


def collect_xml(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The XML files of ``source``, sorted within each entry, without repeats.

    ``source`` is one or a list of: a folder (its ``*.xml`` files, recursively), an ``.xml`` file, a
    list file (any other file: one XML path per line, relative to the list file; ``#`` starts a
    comment), or a glob pattern (``pages/**/*.xml``; quote it on the command line).

    Raises:
        DataError: an entry that matches no XML file.
    """
    entries = [source] if isinstance(source, (str, Path)) else list(source)
    found: list[Path] = []
    for entry in entries:
        p = Path(entry)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() == ".xml" and f.is_file())
        elif p.is_file() and p.suffix.lower() == ".xml":
            files = [p]
        elif p.is_file():
            files = _read_list(p)
        elif not p.exists() and not glob.has_magic(str(entry)):
            raise DataError(f"{entry}: {_missing(p)}")
        else:
            files = sorted(Path(f) for f in glob.glob(str(entry), recursive=True) if f.lower().endswith(".xml"))
        if not files:
            raise DataError(
                f"{entry}: no XML page found; expected a folder of .xml files, a glob such as 'pages/*.xml', "
                "a list file (one XML path per line) or an .xml file"
            )
        found += files
    return list(dict.fromkeys(found))


def _missing(path: Path) -> str:
    """Why a source that does not exist is missing, and what makes it."""
    if path.suffix.lower() == ".xml":
        return "no such XML file"
    if path.suffix:
        return (
            "no such list file (one XML path per line); `python scripts/page_split_lists.py --out DIR data=NAME` "
            "writes the split of a pages data config as DIR/train.txt, val.txt and test.txt"
        )
    return "no such folder; clone or copy the corpus there first (docs/data.md), or point the data config elsewhere"


def _read_list(path: Path) -> list[Path]:
    files = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        file = Path(name) if Path(name).is_absolute() else path.parent / name
        if not file.is_file():
            raise DataError(f"{path}:{lineno}: {file} does not exist (paths are relative to the list file)")
        files.append(file)
    return files


def document_of(xml: Path, pattern: str | None) -> str:
    """The document a page belongs to: the first group of ``pattern`` matched on the file stem (or the
    whole match), else the stem itself (every page its own document)."""
    if pattern is None:
        return xml.stem
    match = re.search(pattern, xml.stem)
    if match is None:
        return xml.stem
    return match.group(1) if match.groups() else match.group(0)


def split_by_document(
    xmls: Sequence[Path], fractions: Mapping[str, float], seed: int, pattern: str | None = None
) -> dict[str, list[Path]]:
    """Split pages into ``fractions`` of the documents (``{"train": 0.8, "val": 0.1, "test": 0.1}``).

    Documents (see :func:`document_of`) are sorted by name, shuffled with ``seed`` and cut in the order
    of ``fractions``; every page of a document lands in the same split, so no split shares a page (or,
    with ``pattern``, a document) with another. A split with a positive fraction gets at least one
    document. The same files, fractions and seed give the same split on every machine.

    Raises:
        DataError: fractions that are negative or do not sum to 1, or fewer documents than splits.
    """
    groups: dict[str, list[Path]] = {}
    for xml in xmls:
        groups.setdefault(document_of(xml, pattern), []).append(xml)
    cut = split_names(groups, fractions, seed, "document")
    return {s: sorted(p for name in names for p in groups[name]) for s, names in cut.items()}


def split_names(
    names: Iterable[str], fractions: Mapping[str, float], seed: int, what: str = "item"
) -> dict[str, list[str]]:
    """Cut distinct ``names`` (documents, or lines for ``data.split_unit=line``) into ``fractions``.

    The names are sorted, shuffled with ``seed`` and cut in the order of ``fractions``, so the result
    does not depend on the order they come in. A split with a positive fraction gets at least one name;
    rounding goes to the first split.

    Raises:
        DataError: fractions that are negative or do not sum to 1, or fewer names than splits.
    """
    total = sum(fractions.values())
    if any(f < 0 for f in fractions.values()) or abs(total - 1.0) > 1e-6:
        raise DataError(f"data.split fractions must be >= 0 and sum to 1, got {dict(fractions)} (sum {total:g})")
    ordered = sorted(set(names))
    wanted = [s for s, f in fractions.items() if f > 0]
    if len(ordered) < len(wanted):
        raise DataError(f"{len(ordered)} {what}(s) cannot be split into {len(wanted)} non-empty splits {wanted}")
    order = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    counts = {s: round(f * len(ordered)) for s, f in fractions.items()}
    for s in wanted:  # every asked-for split gets a name, taken from the largest
        if counts[s] == 0:
            counts[s] = 1
            counts[max(counts, key=lambda k: counts[k])] -= 1
    counts[next(iter(fractions))] += len(ordered) - sum(counts.values())  # rounding goes to the first split
    split: dict[str, list[str]] = {}
    start = 0
    for s, n in counts.items():
        split[s] = order[start : start + n]
        start += n
    return split
