"""The non-finite step guard: a NaN/Inf loss or gradient never reaches the weights."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

from torch import Tensor

log = logging.getLogger(__name__)

POLICIES = ("raise", "skip", "rollback")


class NonFiniteStepError(RuntimeError):
    """A training step produced a non-finite loss or gradient and the policy forbids going on."""


class NonFiniteGuard:
    """Decide, after backward and clipping, whether a step may be applied.

    Args:
        policy: ``"raise"`` stops training at the first non-finite step; ``"skip"`` drops the
            step (no weight, optimizer or scheduler update) and goes on; ``"rollback"`` drops the
            step too and leaves the restore of the last good state and the lower learning rate to
            :class:`recognizer.stability.rollback.Rollback` (bounded there).
        max_consecutive_skips: with ``skip``, raise after this many non-finite steps in a row.
        min_loss_scale: under fp16's GradScaler, an overflow at a loss scale at or below this is a
            non-finite fault (lowering the scale further cannot help: the gradient is NaN/Inf for a
            reason other than range); 0 turns this rule off.
        max_consecutive_overflows: under GradScaler, more overflows than this in a row are a fault.

    Under GradScaler a finite loss with a non-finite gradient is first an *overflow*: the scaler
    skips the step and halves the scale, which is normal for a few steps at the start of a run.
    :meth:`overflow` counts them and says when they stop being normal; from then on the step goes
    through :meth:`check` like any other non-finite step (raise, skip count, rollback).
    """

    def __init__(
        self,
        policy: str = "raise",
        max_consecutive_skips: int = 5,
        min_loss_scale: float = 1e-4,
        max_consecutive_overflows: int = 25,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"non-finite policy must be one of {POLICIES}, got {policy!r}")
        if min_loss_scale < 0 or max_consecutive_overflows < 0:
            raise ValueError(
                "stability.min_loss_scale and stability.max_consecutive_overflows must be >= 0, got "
                f"{min_loss_scale} and {max_consecutive_overflows}"
            )
        self.policy = policy
        self.max_consecutive_skips = max_consecutive_skips
        self.min_loss_scale = min_loss_scale
        self.max_consecutive_overflows = max_consecutive_overflows
        self.consecutive = 0
        self.skipped = 0
        self.overflows = 0  # fp16 overflow steps GradScaler skipped, in all
        self.consecutive_overflows = 0
        self.last_message = ""  # the message of the last non-finite step
        self.last_reason = ""  # why that step was a fault although GradScaler would have skipped it ("": not so)

    def overflow(self, step: int, scale: float) -> str:
        """Count an fp16 gradient overflow (finite loss, non-finite gradient under GradScaler).

        Args:
            step: the global step (1-based).
            scale: the loss scale this step's backward used.

        Returns:
            ``""`` for an ordinary overflow (GradScaler skips the step and lowers the scale; logged
            at INFO, at WARNING once half of ``max_consecutive_overflows`` in a row is reached), else
            why it is a non-finite fault, for the message of :meth:`check`.
        """
        self.overflows += 1
        self.consecutive_overflows += 1
        n = self.consecutive_overflows
        if n > self.max_consecutive_overflows:
            return (
                f"{n} fp16 gradient overflows in a row exceed stability.max_consecutive_overflows="
                f"{self.max_consecutive_overflows} (loss scale now {scale:g})"
            )
        if scale <= self.min_loss_scale:
            return f"fp16 gradient overflow at loss scale {scale:g} <= stability.min_loss_scale={self.min_loss_scale:g}"
        level = logging.WARNING if 2 * n >= max(self.max_consecutive_overflows, 2) else logging.INFO
        log.log(
            level,
            "step %d: fp16 gradient overflow at loss scale %g: GradScaler skips the step and lowers the scale "
            "(%d in a row, %d in all; a fault after stability.max_consecutive_overflows=%d)",
            step,
            scale,
            n,
            self.overflows,
            self.max_consecutive_overflows,
        )
        return ""

    def check(
        self,
        step: int,
        loss: float,
        grad_norm: float,
        per_sample_loss: Tensor,
        ids: Sequence[str],
        diagnose: Callable[[], str] | None = None,
        peer_fault: bool = False,
        reason: str = "",
    ) -> bool:
        """Return True if the step is healthy; otherwise skip (False) or raise, per policy.

        Args:
            step: the global step about to be taken (1-based).
            loss: the batch loss.
            grad_norm: total gradient norm before clipping (after unscaling).
            per_sample_loss: ``(B,)`` unreduced losses, to name the samples at fault.
            ids: the batch's sample ids.
            diagnose: called only on a non-finite step (the healthy path never calls it); its text
                (the localisation, where the batch was saved) is appended to the message.
            peer_fault: under DDP, the fault started on another rank (its loss was non-finite; this
                rank's gradient may be non-finite only because DDP averaged it in): this rank takes
                the same decision (skip, roll back or raise) so the ranks stay in step.
            reason: why a step GradScaler would skip is a fault here (from :meth:`overflow`).
        """
        if math.isfinite(loss) and math.isfinite(grad_norm) and not peer_fault:
            self.consecutive = 0
            self.consecutive_overflows = 0
            return True
        self.consecutive += 1
        self.skipped += 1
        self.last_reason = reason
        if peer_fault:
            message = (
                f"non-finite step {step} on another rank (loss={loss} here, grad_norm={grad_norm} after DDP's "
                "average; the faulty rank's log names the samples)"
            )
        else:
            message = describe(step, loss, grad_norm, per_sample_loss, ids)
        if reason:
            message += f"; {reason}"
        if diagnose is not None and not peer_fault:
            message += f"; {diagnose()}"
        self.last_message = message
        if self.policy == "raise":
            raise NonFiniteStepError(message + " (stability.nonfinite_policy=raise)")
        if self.policy == "rollback":
            log.warning("%s — rolling back", message)
            return False
        if self.consecutive > self.max_consecutive_skips:
            raise NonFiniteStepError(
                f"{message}; {self.consecutive} non-finite steps in a row exceed "
                f"stability.max_consecutive_skips={self.max_consecutive_skips}: training diverged "
                "(lower optimizer.lr, check the inputs, or use trainer.precision=32)"
            )
        log.warning("%s — step skipped (%d in a row)", message, self.consecutive)
        return False

    def state_dict(self) -> dict[str, int]:
        return {
            "consecutive": self.consecutive,
            "skipped": self.skipped,
            "overflows": self.overflows,
            "consecutive_overflows": self.consecutive_overflows,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consecutive, self.skipped = int(state["consecutive"]), int(state["skipped"])
        # checkpoints written before the overflow rule lack these counts
        self.overflows = int(state.get("overflows", 0))
        self.consecutive_overflows = int(state.get("consecutive_overflows", 0))


def describe(step: int, loss: float, grad_norm: float, per_sample_loss: Tensor, ids: Sequence[str]) -> str:
    """One line naming the step, the loss, the gradient norm and the samples at fault."""
    bad = [ids[i] for i, v in enumerate(per_sample_loss.tolist()) if not math.isfinite(v)]
    if bad:
        who = f"non-finite loss in samples {bad[:10]}{' ...' if len(bad) > 10 else ''}"
    elif not math.isfinite(loss):
        who = f"non-finite batch loss (every sample loss finite); batch {list(ids)[:10]}"
    else:
        who = f"finite loss but non-finite gradient; batch {list(ids)[:10]}"
    return f"non-finite step {step}: loss={loss}, grad_norm={grad_norm}: {who}"
