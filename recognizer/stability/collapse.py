"""Blank collapse: a CTC model that predicts (almost) only blanks after warm-up.

A freshly initialised CTC model first learns to emit blank everywhere (the cheapest way to lower
the loss); it normally leaves that plateau within a few hundred steps. When greedy outputs stay
(almost) all blank validation after validation, something is usually wrong, and this module says
what to look at.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from recognizer.ctc import BLANK

log = logging.getLogger(__name__)

CAUSES = (
    "the head's class count or the blank id disagree with the labels (blank must be id 0, "
    "C = charset + 1; run recognizer-doctor)",
    "labels padded with 0 and the padding counted as labels (target lengths must be explicit)",
    "a learning rate too high (collapsed onto blank) or too low (not yet out of the plateau): "
    "try optimizer.lr ×0.3 or ×3, or a longer scheduler.warmup_steps",
    "too few output frames per label (check the audit's frames_per_label statistics)",
)


def blank_frames(logits: Tensor, lengths: Tensor) -> tuple[int, int]:
    """Count blank argmax frames among the valid frames.

    Args:
        logits: ``(B, T, C)`` scores.
        lengths: ``(B,)`` valid frames per sample.

    Returns:
        ``(blank frames, valid frames)``.
    """
    best = logits.argmax(-1)  # (B, T)
    valid = torch.arange(best.size(1), device=best.device).unsqueeze(0) < lengths.to(best.device).unsqueeze(1)
    return int(((best == BLANK) & valid).sum()), int(valid.sum())


class BlankCollapseMonitor:
    """Warn when validation outputs stay (almost) all blank after warm-up.

    Args:
        warmup_steps: ignore validations before this many optimizer steps.
        patience: warn after this many consecutive collapsed validations (>= 1).
        threshold: a validation is collapsed when at least this fraction of valid frames is blank
            and at least this fraction of hypotheses is empty, in (0, 1].
    """

    def __init__(self, warmup_steps: int = 500, patience: int = 2, threshold: float = 0.99) -> None:
        if patience < 1 or not 0.0 < threshold <= 1.0:
            raise ValueError(
                "stability.collapse_patience must be >= 1 and collapse_threshold in (0, 1], "
                f"got {patience}, {threshold}"
            )
        self.warmup_steps = warmup_steps
        self.patience = patience
        self.threshold = threshold
        self.consecutive = 0
        self.warned = False

    def update(self, step: int, blank_rate: float, empty_rate: float) -> str | None:
        """Record one validation; return (and log) the warning when collapse persists, else None."""
        if step < self.warmup_steps:
            return None
        if blank_rate >= self.threshold and empty_rate >= self.threshold:
            self.consecutive += 1
        else:
            self.consecutive = 0
        if self.consecutive < self.patience:
            return None
        message = (
            f"blank collapse: at step {step}, {blank_rate:.1%} of output frames are blank and "
            f"{empty_rate:.1%} of validation hypotheses are empty for {self.consecutive} validations in a "
            "row. Likely causes: " + "; ".join(f"({i}) {c}" for i, c in enumerate(CAUSES, 1))
        )
        log.warning("%s", message)
        self.warned = True
        return message

    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consecutive = int(state["consecutive"])
