"""Wire the ``stability`` config node into a training run: inspector, rollback, collapse, CTC backend."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from recognizer.ctc import CTCLoss, CTCOutput
from recognizer.stability.collapse import BlankCollapseMonitor
from recognizer.stability.divergence import DivergenceMonitor
from recognizer.stability.guard import NonFiniteGuard
from recognizer.stability.localize import NonFiniteInspector
from recognizer.stability.options import StabilityOptions
from recognizer.stability.rollback import Rollback


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


def attach_stability(state: Any, stability: Stability, run_dir: str | Path) -> None:
    """Give a :class:`~recognizer.engine.loop.TrainState` its inspector, rollback, collapse and divergence monitors."""
    stability = StabilityOptions.from_config(stability)
    state.inspector = NonFiniteInspector(
        run_dir, save=stability.save_nonfinite, replay=stability.localize, max_files=stability.max_nonfinite_files
    )
    if stability.nonfinite_policy == "rollback":
        state.rollback = Rollback(
            stability.rollback_every_n_steps, stability.rollback_lr_factor, stability.max_rollbacks
        )
    if stability.collapse_patience > 0:
        state.collapse = BlankCollapseMonitor(
            stability.collapse_warmup_steps, stability.collapse_patience, stability.collapse_threshold
        )
    if stability.divergence_check:
        state.divergence = DivergenceMonitor(
            stability.divergence_factor,
            stability.divergence_patience_steps,
            stability.divergence_window,
            val_factor=stability.divergence_val_factor,
            val_patience=stability.divergence_val_patience,
            lr_factor=stability.divergence_lr_factor,
            val_min_rise=stability.divergence_val_min_rise,
        )
