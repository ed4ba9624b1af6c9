"""Pre-flight audit: every sample is checked against the CTC contract before the first step.

Checks, per sample: an input the reader cannot use (unreadable, empty, silent, missing, at the
wrong sample rate, or too large to decode: found in the headers, or when the input is loaded); empty
transcript; a transcript of only whitespace; invisible format characters (Unicode Cf: zero-width
space, direction marks, BOM, soft hyphen) that the alphabet does not list; symbols outside the
alphabet; transcript longer than ``max_label_length``; the exact CTC bound ``T_out >= L + adjacent
repeats``; the safety rule ``T_out >= ratio * L``; non-finite or out-of-range input values.
``T_out`` comes from the model's ``output_lengths``, so nothing needs a forward pass. Violations are
either fatal (``error``: the message lists offending samples and says what to change) or dropped and
counted by reason (``drop``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from recognizer.alphabet import Alphabet, describe_char, is_format_char, normalize
from recognizer.ctc import min_output_length
from recognizer.data.base import DataError

log = logging.getLogger(__name__)

FIXES = {
    "empty": "remove the empty transcripts or fix them",
    "whitespace_only": "remove the transcripts that hold only spaces or fix them (a label of spaces teaches the "
    "model to read a space into any line)",
    "invisible": "remove the invisible format characters (Unicode Cf: zero-width space, direction marks, BOM, soft "
    "hyphen) from the transcripts, set stability.strip_format_chars=true to remove them when the data is read, or "
    "list them in the alphabet file (data.alphabet) if the script needs them (ZWNJ/ZWJ in Persian or Indic text)",
    "unknown_symbol": "add the symbols to the alphabet, or set stability.unknown=unk or =drop",
    "too_long": "raise stability.max_label_length or remove the long lines",
    "infeasible": "(exact CTC bound: label length + adjacent repeats) use wider inputs, a larger "
    "data.height (widths scale with it), less width pooling in the model, or shorter labels",
    "below_ratio": "(safety rule T_out >= ratio × L) use wider inputs / a larger data.height, less "
    "width pooling in the model, shorter labels, or lower stability.min_frames_per_label",
    "non_finite": "fix or remove the files with NaN/Inf values",
    "unreadable": "re-encode or remove these files (each message says what is wrong), or set "
    "stability.audit_policy=drop to train without them",
    "empty_input": "remove the empty files (0 bytes, 0 samples or 0 pixels) from the manifest, or set "
    "stability.audit_policy=drop to train without them",
    "silent": "remove the silent recordings (every sample 0) or replace them with the real audio, or set "
    "stability.audit_policy=drop to train without them",
    "wrong_rate": "set data.resample=true, resample the files to data.sample_rate, or set "
    "stability.audit_policy=drop to train without them",
    "truncated": "copy or export the files again (their headers promise more audio than they hold), or set "
    "stability.audit_policy=drop to train without them",
    "missing_file": "fix the paths in the manifest (relative paths are relative to it) or remove those lines",
    "out_of_range": "scale float images to [0, 1], or save them as 8- or 16-bit images",
    "too_large": "downscale these images or cut these recordings; if they are genuine, raise the limit with the "
    "environment variable RECOGNIZER_MAX_IMAGE_PIXELS=N or RECOGNIZER_MAX_AUDIO_SECONDS=S; or set "
    "stability.audit_policy=drop to train without them",
}
# Reasons of the inputs themselves (not the transcripts): they are counted under these names.
INPUT_REASONS = (
    "unreadable",
    "empty_input",
    "truncated",
    "silent",
    "wrong_rate",
    "missing_file",
    "out_of_range",
    "non_finite",
    "too_large",
)


class AuditError(ValueError):
    """The data breaks the CTC contract and the policy is ``error``."""


def reason_of(error: DataError) -> str:
    """The audit reason of a reader's error about one input (errors without a reason: by their message)."""
    if error.reason in FIXES:
        return error.reason
    return "non_finite" if "non-finite" in str(error) else "unreadable"


@dataclass
class AuditReport:
    """What the audit found in one split."""

    split: str
    total: int
    kept: list[int]
    violations: dict[str, list[str]] = field(default_factory=dict)  # reason → sample ids
    details: dict[str, list[str]] = field(default_factory=dict)  # reason → examples with numbers
    stats: dict[str, float] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)  # removed by a reader's filter before the audit

    @property
    def dropped(self) -> int:
        return self.total - len(self.kept)

    def summary(self) -> str:
        lines = [f"audit[{self.split}]: {self.total} samples, {len(self.kept)} pass, {self.dropped} fail the checks"]
        for reason, ids in self.violations.items():
            examples = "; ".join(self.details[reason][:3])
            lines.append(f"  {reason}: {len(ids)} — e.g. {examples} — fix: {FIXES[reason]}")
        for reason, n in self.filtered.items():
            lines.append(f"  filtered before the audit ({reason}): {n}")
        stats = ", ".join(f"{k}={v:.4g}" for k, v in self.stats.items())
        lines.append(f"  stats: {stats}")
        return "\n".join(lines)

    def counts(self) -> dict[str, int]:
        """What this split lost, as metrics: ``dropped``, ``dropped/<reason>`` and ``filtered/<reason>``."""
        counts = {"dropped": self.dropped}
        counts |= {f"dropped/{reason}": len(ids) for reason, ids in self.violations.items()}
        return counts | {f"filtered/{reason}": n for reason, n in self.filtered.items()}

    def to_dict(self) -> dict:
        return {
            "split": self.split,
            "total": self.total,
            "kept": len(self.kept),
            "dropped": self.dropped,
            "violations": {k: {"count": len(v), "examples": self.details[k][:20]} for k, v in self.violations.items()},
            "filtered": self.filtered,
            "stats": self.stats,
        }


def audit_split(
    split: str,
    ids: Sequence[str],
    texts: Sequence[str],
    widths: Sequence[int],
    alphabet: Alphabet,
    output_lengths: Callable[[Tensor], Tensor],
    policy: str = "error",
    unknown: str = "error",
    min_frames_per_label: float = 2.0,
    max_label_length: int | None = None,
    load_input: Callable[[int], Tensor] | None = None,
    drop_hint: str = "set stability.audit_policy=drop to train without these samples",
    unknown_key: str = "stability.unknown",
    unreadable: Mapping[int, DataError] | None = None,
) -> AuditReport:
    """Audit one split.

    Args:
        split: name used in messages.
        ids, texts, widths: per sample, the id, transcript and input width (or frames).
        alphabet: the model's alphabet.
        output_lengths: the model's ``output_lengths`` (input widths → output frames).
        policy: ``"error"`` raises :class:`AuditError` on any violation; ``"drop"`` drops and counts.
        unknown: unknown-symbol policy: ``"error"``, ``"drop"`` (the sample) or ``"unk"``.
        min_frames_per_label: the safety ratio; 0 disables the rule (the exact bound stays).
        max_label_length: longest allowed transcript, or ``None``.
        load_input: if given, ``load_input(i)`` returns sample ``i``'s input; every input is then
            loaded once to check for non-finite values and to collect value statistics.
        drop_hint: how the caller's user turns on ``drop`` (the end of the error message).
        unknown_key: the key that sets ``unknown`` for the caller's user (named when it alone stops a
            ``drop`` audit).
        unreadable: samples whose input the reader already found unusable from its header
            (index → the reader's error, which names the file and carries the reason); their
            ``widths`` entries are ignored.
    """
    _check_policies(policy, unknown, alphabet)
    unreadable = unreadable or {}
    # an unusable input's width is a placeholder: give output_lengths a valid one
    widths = [1 if i in unreadable else w for i, w in enumerate(widths)]
    t_out = output_lengths(torch.tensor(widths, dtype=torch.long)).tolist()
    violations: dict[str, list[str]] = {}
    details: dict[str, list[str]] = {}
    fatal: set[str] = set()
    kept: list[int] = []
    label_lengths: list[int] = []
    ratios: list[float] = []

    def flag(reason: str, i: int, detail: str, is_fatal: bool) -> None:
        violations.setdefault(reason, []).append(ids[i])
        details.setdefault(reason, []).append(f"{ids[i]}: {detail}")
        if is_fatal:
            fatal.add(reason)

    for i, text in enumerate(texts):
        if i in unreadable:  # first: a file that cannot be read is reported as such, whatever its label
            flag(reason_of(unreadable[i]), i, str(unreadable[i]), policy == "error")
            continue
        checked = check_label(text, alphabet, t_out[i], widths[i], unknown, max_label_length, min_frames_per_label)
        if isinstance(checked, tuple):  # under drop, only an unknown symbol with unknown=error stops the run
            reason, detail = checked
            flag(reason, i, detail, unknown == "error" if reason == "unknown_symbol" else policy == "error")
            continue
        label_lengths.append(checked)
        ratios.append(t_out[i] / checked)
        kept.append(i)

    stats = label_stats(label_lengths, ratios)
    if load_input is not None:
        _scan_inputs(kept, ids, load_input, stats, flag, policy)
        bad = {sample for reason in INPUT_REASONS for sample in violations.get(reason, [])}
        kept = [i for i in kept if ids[i] not in bad]
    report = AuditReport(split, len(ids), kept, violations, details, stats)
    if fatal and policy == "drop":  # under drop only stability.unknown=error stops the run
        raise AuditError(
            f"the {split} data has symbols outside the alphabet ({unknown_key}=error):\n{report.summary()}\n"
            f"Add them to the alphabet, or set {unknown_key}=drop (skip those samples) or =unk."
        )
    if fatal:
        raise AuditError(
            f"the {split} data breaks the CTC contract (policy=error):\n{report.summary()}\n"
            f"Fix the data, or {drop_hint}."
        )
    return report


def _check_policies(policy: str, unknown: str, alphabet: Alphabet) -> None:
    if policy not in ("error", "drop"):
        raise ValueError(f"audit policy must be 'error' or 'drop', got {policy!r}")
    if unknown not in ("error", "drop", "unk"):
        raise ValueError(f"unknown-symbol policy must be 'error', 'drop' or 'unk', got {unknown!r}")
    if unknown == "unk" and not alphabet.has_unk:
        raise ValueError(
            "stability.unknown=unk needs the symbol <unk> in the alphabet: add a line <unk> to the "
            "alphabet file (a built alphabet gets it automatically)"
        )


def check_label(
    text: str,
    alphabet: Alphabet,
    frames: int,
    width: int,
    unknown: str,
    max_label_length: int | None,
    min_frames_per_label: float,
) -> tuple[str, str] | int:
    """One transcript against the ``frames`` its input of ``width`` gives: its first violation as
    ``(reason, detail)``, or its label length when it passes every check."""
    text = normalize(text)
    if not text:
        return "empty", "empty transcript"
    if not text.strip():
        return "whitespace_only", f"transcript of only whitespace {text!r}"
    invisible = [c for c in alphabet.unknown(text) if is_format_char(c)]
    if invisible:
        where = ", ".join(f"{describe_char(c)} at {text.index(c)}" for c in invisible)
        return "invisible", f"invisible format character {where} in {text!r}"
    missing = alphabet.unknown(text)
    if missing and unknown != "unk":
        return "unknown_symbol", f"{''.join(missing)!r} in {text!r}"
    label = alphabet.encode(text, "unk")
    n = len(label)
    if max_label_length is not None and n > max_label_length:
        return "too_long", f"{n} symbols > {max_label_length}"
    need = min_output_length(torch.tensor(label))
    if frames < need:
        return "infeasible", f"width {width} → {frames} frames < {need} needed"
    if frames < min_frames_per_label * n:
        return "below_ratio", f"width {width} → {frames} frames < {min_frames_per_label:g} × {n} labels"
    return n


def label_stats(label_lengths: list[int], ratios: list[float]) -> dict[str, float]:
    """Mean and longest label, fewest and mean frames per label over the samples that passed."""
    if not label_lengths:
        return {}
    return {
        "label_len_mean": sum(label_lengths) / len(label_lengths),
        "label_len_max": max(label_lengths),
        "frames_per_label_min": min(ratios),
        "frames_per_label_mean": sum(ratios) / len(ratios),
    }


def _scan_inputs(
    indices: list[int],
    ids: Sequence[str],
    load_input: Callable[[int], Tensor],
    stats: dict[str, float],
    flag: Callable[[str, int, str, bool], None],
    policy: str,
) -> None:
    """Load every input once: non-finite values are violations; collect min/max/mean/std."""
    total = count = 0.0
    sq = 0.0
    lo, hi = math.inf, -math.inf
    for i in indices:
        try:
            x = load_input(i).double()
        except DataError as e:  # the dataset's own checks name the file: NaN/Inf, silent, corrupt data
            flag(reason_of(e), i, str(e), policy == "error")
            continue
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            flag("non_finite", i, f"{int((~finite).sum())} non-finite values", policy == "error")
            continue
        total += float(x.sum())
        sq += float((x * x).sum())
        count += x.numel()
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    if count:
        mean = total / count
        stats.update(
            input_min=lo, input_max=hi, input_mean=mean, input_std=math.sqrt(max(sq / count - mean * mean, 0.0))
        )


def write_reports(reports: Sequence[AuditReport], folder: str | Path) -> Path:
    """Save the reports as ``audit.json`` in the run directory and log their summaries.

    A split that lost samples (dropped by the audit or filtered by its reader) is logged as a
    WARNING: its metrics cover fewer samples than its manifest lists.
    """
    path = Path(folder) / "audit.json"
    path.write_text(json.dumps([r.to_dict() for r in reports], indent=2) + "\n", encoding="utf-8")
    for r in reports:
        log.log(logging.WARNING if r.dropped or r.filtered else logging.INFO, "%s", r.summary())
    return path
