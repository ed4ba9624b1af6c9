"""Wire the ``stability`` config node into a run: the pre-flight audit of a split, the CTC backend, the
non-finite guard and inspector, and the monitors behind the loop's hooks."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from recognizer.alphabet import Alphabet, describe_char, is_format_char, strip_format_chars
from recognizer.ctc import CTCLoss, CTCOutput
from recognizer.stability.audit import AuditReport, audit_split
from recognizer.stability.collapse import BlankCollapseMonitor
from recognizer.stability.divergence import DivergenceMonitor
from recognizer.stability.guard import NonFiniteGuard
from recognizer.stability.localize import NonFiniteInspector
from recognizer.stability.monitors import StabilityMonitors
from recognizer.stability.options import StabilityOptions
from recognizer.stability.rollback import Rollback

if TYPE_CHECKING:
    from recognizer.data.images.lines import LineDataset
    from recognizer.models.base import Recognizer

log = logging.getLogger(__name__)


class NativeCTCLoss(CTCLoss):
    """:class:`CTCLoss` with cuDNN disabled around the loss, so CUDA always runs PyTorch's native kernel.

    cuDNN's CTC has had NaN and determinism bugs. With this package's int64 padded targets PyTorch
    already picks the native kernel; this class makes the choice explicit and independent of
    future dispatch rules. On CPU it changes nothing.
    """

    def forward(self, logits: Tensor, output_lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> CTCOutput:
        with torch.backends.cudnn.flags(enabled=False):
            return super().forward(logits, output_lengths, targets, target_lengths)


#: What the functions below accept: the options, or a ``stability`` config node they are built from.
Stability = StabilityOptions | Mapping[str, Any]


def make_ctc(stability: Stability) -> CTCLoss:
    """The loss per ``stability.zero_infinity``, ``ctc_reduction`` and ``cudnn_ctc``."""
    stability = StabilityOptions.from_config(stability)
    cls = CTCLoss if stability.cudnn_ctc else NativeCTCLoss
    return cls(zero_infinity=stability.zero_infinity, reduction=stability.ctc_reduction)


def make_guard(stability: Stability) -> NonFiniteGuard:
    """The non-finite guard per ``stability.nonfinite_policy`` and its limits (skips, fp16 overflows)."""
    stability = StabilityOptions.from_config(stability)
    return NonFiniteGuard(
        stability.nonfinite_policy,
        stability.max_consecutive_skips,
        stability.min_loss_scale,
        stability.max_consecutive_overflows,
    )


def attach_stability(state: Any, stability: Stability, run_dir: str | Path) -> StabilityMonitors:
    """Give a :class:`~recognizer.engine.loop.TrainState` its non-finite inspector and, as one loop callback,
    the rollback, divergence and blank-collapse monitors that ``stability`` turns on (returned)."""
    stability = StabilityOptions.from_config(stability)
    state.inspector = NonFiniteInspector(
        run_dir, save=stability.save_nonfinite, replay=stability.localize, max_files=stability.max_nonfinite_files
    )
    monitors = StabilityMonitors()
    if stability.nonfinite_policy == "rollback":
        monitors.rollback = Rollback(
            stability.rollback_every_n_steps, stability.rollback_lr_factor, stability.max_rollbacks
        )
    if stability.collapse_patience > 0:
        monitors.collapse = BlankCollapseMonitor(
            stability.collapse_warmup_steps, stability.collapse_patience, stability.collapse_threshold
        )
    if stability.divergence_check:
        monitors.divergence = DivergenceMonitor(
            stability.divergence_factor,
            stability.divergence_patience_steps,
            stability.divergence_window,
            val_factor=stability.divergence_val_factor,
            val_patience=stability.divergence_val_patience,
            lr_factor=stability.divergence_lr_factor,
            val_min_rise=stability.divergence_val_min_rise,
        )
    state.callbacks.append(monitors)
    return monitors


def run_audit(
    split: str,
    dataset: LineDataset,
    alphabet: Alphabet,
    model: Recognizer,
    stability: Stability,
    training: bool | None = None,
    **kwargs: Any,
) -> AuditReport:
    """Audit one split with the ``stability`` config node's policies (``kwargs``: more of :func:`audit_split`'s).

    Samples whose headers the dataset could not use are violations of their reason; what the
    dataset's reader filtered out before (``dataset.filtered``) is carried into the report.
    ``stability.min_frames_per_label`` guards the CTC gradient, so it applies to the samples a model
    is trained on (``training``; by default the train split): validation and test keep every sample
    CTC can align at all (the exact bound), so a score is never flattered by leaving hard lines out.

    With ``stability.strip_format_chars``, invisible format characters the alphabet does not list are
    first removed from the dataset's transcripts (logged), so training, scoring and the audit all see
    the cleaned text; otherwise the audit reports them (reason ``invisible``).
    """
    stability = StabilityOptions.from_config(stability)
    if training is None:
        training = split == "train"
    if stability.strip_format_chars:
        strip_invisible(split, dataset, alphabet)
    report = audit_split(
        split,
        dataset.ids,
        dataset.texts,
        dataset.header_widths,
        alphabet,
        model.output_lengths,
        policy=stability.audit_policy,
        unknown=stability.unknown,
        min_frames_per_label=stability.min_frames_per_label if training else 0.0,
        max_label_length=stability.max_label_length,
        load_input=dataset.load if stability.scan_inputs else None,
        unreadable=dataset.unreadable,
        **kwargs,
    )
    report.filtered = dict(dataset.filtered)
    return report


def strip_invisible(split: str, dataset: LineDataset, alphabet: Alphabet) -> int:
    """Remove invisible format characters that ``alphabet`` does not list from ``dataset``'s transcripts.

    Returns:
        How many transcripts changed (the characters removed are logged by code point).
    """
    keep = [s for s in alphabet.symbols if len(s) == 1]
    removed: Counter[str] = Counter()
    for text in dataset.texts:
        removed.update(c for c in text if is_format_char(c) and c not in keep)
    changed = dataset.map_texts(lambda text: strip_format_chars(text, keep))
    if changed:
        chars = ", ".join(f"{describe_char(c)} ×{n}" for c, n in removed.most_common())
        log.info(
            "%s: removed %d invisible format characters from %d transcripts (stability.strip_format_chars=true): %s",
            split,
            sum(removed.values()),
            changed,
            chars,
        )
    return changed
