"""Score predictions against references: CER/WER with substitutions, deletions, insertions, worst lines.

The command is ``recognizer-score`` (:mod:`recognizer.cli.score`). Inputs: a predictions TSV with
header ``id<TAB>reference<TAB>hypothesis`` (as recognizer-eval writes it); or a hypothesis file plus
``--ref``, each a TSV ``id<TAB>text`` (a first line ``id<TAB>text`` or ``image<TAB>text`` is a header)
or JSONL with ``id`` (or ``path``, ``image``, ``audio_filepath``) and ``text`` keys, matched by id:
transcribe's output and data manifests work as they are.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from recognizer.metrics import nfc


@dataclass
class EditCounts:
    """Levenshtein alignment counts; ``errors = substitutions + deletions + insertions``."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference_length: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        return self.errors / max(self.reference_length, 1)

    def __iadd__(self, other: EditCounts) -> EditCounts:
        self.substitutions += other.substitutions
        self.deletions += other.deletions
        self.insertions += other.insertions
        self.reference_length += other.reference_length
        return self


def edit_counts(ref: Sequence, hyp: Sequence) -> EditCounts:
    """Substitutions, deletions and insertions of a minimum-cost alignment of ``hyp`` to ``ref``.

    Among equal-cost alignments, substitutions are preferred over deletion + insertion pairs.
    """
    n, m = len(ref), len(hyp)
    # cost[i][j] = (edits, -substitutions) so that ties favour substitutions
    cost = [[(0, 0)] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        cost[i][0] = (i, 0)
    for j in range(1, m + 1):
        cost[0][j] = (j, 0)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            e, s = cost[i - 1][j - 1]
            diag = (e, s) if ref[i - 1] == hyp[j - 1] else (e + 1, s - 1)
            up, left = cost[i - 1][j], cost[i][j - 1]
            cost[i][j] = min(diag, (up[0] + 1, up[1]), (left[0] + 1, left[1]))
    counts = EditCounts(reference_length=n)
    i, j = n, m
    while i > 0 or j > 0:  # trace back one optimal path
        if i > 0 and j > 0:
            e, s = cost[i - 1][j - 1]
            same = ref[i - 1] == hyp[j - 1]
            if cost[i][j] == ((e, s) if same else (e + 1, s - 1)):
                counts.substitutions += not same
                i, j = i - 1, j - 1
                continue
        if i > 0 and cost[i][j] == (cost[i - 1][j][0] + 1, cost[i - 1][j][1]):
            counts.deletions += 1
            i -= 1
        else:
            counts.insertions += 1
            j -= 1
    return counts


@dataclass
class Report:
    """Corpus-level character and word counts plus per-line character errors."""

    chars: EditCounts = field(default_factory=EditCounts)
    words: EditCounts = field(default_factory=EditCounts)
    lines: list[tuple[int, str, str, str]] = field(default_factory=list)  # (char errors, id, ref, hyp)


def score(rows: Sequence[tuple[str, str, str]]) -> Report:
    """Score ``(id, reference, hypothesis)`` rows (words split on whitespace; both in Unicode NFC)."""
    report = Report()
    for id_, ref, hyp in rows:
        ref, hyp = nfc(ref), nfc(hyp)  # as ErrorRates scores them
        c = edit_counts(ref, hyp)
        report.chars += c
        report.words += edit_counts(ref.split(), hyp.split())
        report.lines.append((c.errors, id_, ref, hyp))
    return report


#: A page is named as suspect when it has this many scored lines, and a CER at least this many times the whole
#: split's and at least this high: text placed on the wrong lines (coordinates for another scan, a shifted
#: reading order) looks so, and no rule on the XML alone can find it when the coordinates stay inside the image.
SUSPECT_MIN_LINES, SUSPECT_FACTOR, SUSPECT_MIN_CER = 3, 2.0, 0.5


def suspect_pages(report: Report) -> list[tuple[str, int, float]]:
    """Pages whose CER is far above the split's, worst first: ``(page, lines, CER)``.

    A page is the part of a line id before its last ``/`` (page data names its lines ``<xml stem>/<line
    id>``); ids without one form no page. The thresholds: :data:`SUSPECT_MIN_LINES`, :data:`SUSPECT_FACTOR`,
    :data:`SUSPECT_MIN_CER`.
    """
    pages: dict[str, list[int]] = {}
    for errors, id_, ref, _ in report.lines:
        if "/" in id_:
            counts = pages.setdefault(id_.rsplit("/", 1)[0], [0, 0, 0])
            counts[0], counts[1], counts[2] = counts[0] + 1, counts[1] + errors, counts[2] + len(ref)
    floor = max(SUSPECT_MIN_CER, SUSPECT_FACTOR * report.chars.rate)
    found = [(page, n, errors / chars) for page, (n, errors, chars) in pages.items() if chars]
    suspects = [(page, n, cer) for page, n, cer in found if n >= SUSPECT_MIN_LINES and cer >= floor]
    return sorted(suspects, key=lambda p: (-p[2], p[0]))


def suspect_summary(report: Report, split: str) -> str | None:
    """One message naming the suspect pages of ``split`` and what to check, or None when there are none."""
    suspects = suspect_pages(report)
    if not suspects:
        return None
    named = ", ".join(f"{page} ({n} lines, CER {cer:.2f})" for page, n, cer in suspects)
    return (
        f"{split}: {len(suspects)} page(s) score far below the rest (CER >= {SUSPECT_MIN_CER} and >= "
        f"{SUSPECT_FACTOR:g} x the split's {report.chars.rate:.3f}): {named}. Check that their transcriptions sit on "
        "the right lines (draw the line outlines on the image): misplaced ground truth looks like this"
    )


#: What names a line in a reference or hypothesis file: an id, transcribe's ``path``, or a data
#: manifest's ``image`` (line TSV/JSONL) or ``audio_filepath`` (speech JSONL); the first present wins.
ID_KEYS = ("id", "path", "image", "audio_filepath")


def read_texts(path: Path) -> dict[str, str]:
    """``{id: text}`` from a TSV (``id<TAB>text``; a header line ``id``/``path``/``image`` ``<TAB>text``
    is skipped) or JSONL (an id key of :data:`ID_KEYS` and ``text``): transcribe's outputs and the data
    manifests both work."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    texts: dict[str, str] = {}
    first: dict[str, int] = {}  # id → the line that gave it

    def put(key: str, text: str, lineno: int) -> None:
        if key in first:  # which of the two to score cannot be guessed
            raise ValueError(f"{path}:{lineno}: id {key!r} appears twice (first on line {first[key]}): one text an id")
        first[key], texts[key] = lineno, text

    with path.open(encoding="utf-8-sig", newline="") as f:
        if path.suffix == ".jsonl":
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        obj = json.loads(line)
                        key = next(k for k in ID_KEYS if k in obj)
                        text = obj["text"]
                    except (json.JSONDecodeError, KeyError, TypeError, StopIteration) as e:
                        raise ValueError(
                            f"{path}:{lineno}: expected a JSON object with an id ({', '.join(ID_KEYS)}) and 'text' "
                            f"({type(e).__name__}: {e})"
                        ) from None
                    put(str(obj[key]), text, lineno)
            return texts
        for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or (lineno == 1 and row[0] in ID_KEYS and row[1:] == ["text"]):
                continue
            if len(row) != 2:
                raise ValueError(f"{path}:{lineno}: expected 2 tab-separated fields (id, text), got {len(row)}")
            put(row[0], row[1], lineno)
    return texts


def read_predictions(path: Path) -> list[tuple[str, str, str]]:
    """``(id, reference, hypothesis)`` rows of a predictions TSV (header ``id reference hypothesis``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\"))
    if not rows or rows[0] != ["id", "reference", "hypothesis"]:
        raise ValueError(
            f"{path}: expected the header id<TAB>reference<TAB>hypothesis (a recognizer-eval predictions file); "
            "for a hypothesis file alone, give the references with --ref"
        )
    bad = [i for i, r in enumerate(rows[1:], 2) if len(r) != 3]
    if bad:
        raise ValueError(f"{path}:{bad[0]}: expected 3 tab-separated fields (id, reference, hypothesis)")
    return [(r[0], r[1], r[2]) for r in rows[1:]]


def pair(hypotheses: dict[str, str], references: dict[str, str], hyp_path: Path, ref_path: Path) -> list:
    """Join by id; every reference needs a hypothesis and vice versa."""
    missing = [k for k in references if k not in hypotheses]
    extra = [k for k in hypotheses if k not in references]
    if missing or extra:
        raise ValueError(
            f"ids differ between {hyp_path} and {ref_path}: {len(missing)} reference(s) without hypothesis "
            f"{missing[:3]}, {len(extra)} hypothesis(es) without reference {extra[:3]}"
        )
    return [(k, references[k], hypotheses[k]) for k in references]


def format_report(report: Report, worst: int) -> str:
    """The printed summary: CER and WER lines with counts, then the ``worst`` lines by character errors."""
    lines = []
    for name, c in (("CER", report.chars), ("WER", report.words)):
        lines.append(
            f"{name} {c.rate:.2%} ({c.errors}/{c.reference_length}: {c.substitutions} substitutions, "
            f"{c.deletions} deletions, {c.insertions} insertions)"
        )
    lines.append(f"{len(report.lines)} lines, {sum(1 for e, *_ in report.lines if e)} with errors")
    suspects = suspect_pages(report)
    if suspects:
        lines.append(f"pages far below the rest ({len(suspects)}: page, lines, CER):")
        lines += [f"  {page}\t{n}\t{cer:.3f}" for page, n, cer in suspects]
    ranked = sorted((r for r in report.lines if r[0]), key=lambda r: (-r[0], r[1]))[:worst]
    if ranked:
        lines.append(f"worst {len(ranked)} lines (char errors, id, reference → hypothesis):")
        lines += [f"  {e}\t{i}\t{ref!r} → {hyp!r}" for e, i, ref, hyp in ranked]
    return "\n".join(lines)


def write_predictions(rows: list[tuple[str, str, str]], path: Path) -> Path:
    """Write ``id, reference, hypothesis`` rows as a TSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writerow(["id", "reference", "hypothesis"])
        writer.writerows(rows)
    return path
