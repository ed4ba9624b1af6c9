"""Rollback after a non-finite step: restore the last good state and lower the learning rate.

The last good state is a CPU copy of the model, optimizer, scheduler and scaler state, taken
every ``every_n_steps`` applied steps (and once before the first step). The trade-off: a copy
costs one device→host transfer of the weights and optimizer moments (on CUDA it synchronises),
so it is not taken every step; a rollback then loses up to ``every_n_steps`` steps of progress.
The step counter and the position in the data go on (the batches after the failure are new
ones), so a rollback never replays the batch that failed.

A rollback after a divergence (:mod:`recognizer.stability.divergence`) may ask for an older state
than the newest: the last one taken at or before a given step. So besides the newest snapshot, the
newest one at or before ``keep_step`` (the divergence monitor's reference step) is kept: at most two
CPU copies.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from recognizer.stability.guard import NonFiniteStepError

log = logging.getLogger(__name__)


class RollbackError(NonFiniteStepError):
    """More rollbacks than allowed: training keeps diverging after lowering the learning rate."""


def _to_cpu(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", copy=True)
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(v) for v in x)
    return copy.deepcopy(x)


@dataclass
class RollbackEvent:
    step: int  # the failing step
    restored_step: int  # the step of the restored state
    lr_scale: float  # learning-rate multiplier in force after the rollback
    message: str  # the guard's message for the failing step


class Rollback:
    """Keep the last good state; on a non-finite step restore it with a lower learning rate.

    Args:
        every_n_steps: snapshot the state after every N-th applied step (>= 1).
        lr_factor: multiply the learning rate by this after each rollback, in (0, 1].
        max_rollbacks: raise :class:`RollbackError` (with the history) on the rollback after this many.
    """

    def __init__(self, every_n_steps: int = 50, lr_factor: float = 0.5, max_rollbacks: int = 3) -> None:
        if every_n_steps < 1:
            raise ValueError(f"stability.rollback_every_n_steps must be >= 1, got {every_n_steps}")
        if not 0.0 < lr_factor <= 1.0:
            raise ValueError(f"stability.rollback_lr_factor must be in (0, 1], got {lr_factor}")
        self.every_n_steps = every_n_steps
        self.lr_factor = lr_factor
        self.max_rollbacks = max_rollbacks
        self.lr_scale = 1.0  # cumulative learning-rate multiplier
        self.snapshot: dict[str, Any] | None = None  # the newest good state
        self.anchor: dict[str, Any] | None = None  # an older one kept for a rollback to ``keep_step`` (or None)
        self.history: list[RollbackEvent] = []

    def maybe_snapshot(self, state: Any, applied: bool, keep_step: int | None = None) -> None:
        """After a step: take a snapshot if none exists yet or every ``every_n_steps`` applied steps;
        keep the newest one taken at or before ``keep_step`` too."""
        if self.snapshot is None or (applied and state.step % self.every_n_steps == 0):
            self.take(state, keep_step)

    def take(self, state: Any, keep_step: int | None = None) -> None:
        """Copy the model/optimizer/scheduler/scaler state to the CPU (the previous copy becomes the
        anchor when it was taken at or before ``keep_step``; an anchor newer than ``keep_step`` is dropped)."""
        old = self.snapshot
        if keep_step is None:
            self.anchor = None
        else:
            if self.anchor is not None and self.anchor["step"] > keep_step:
                self.anchor = None
            if old is not None and old["step"] <= keep_step:
                self.anchor = old
        self.snapshot = {
            "step": state.step,
            "lr_scale": self.lr_scale,
            "model": _to_cpu(state.model.state_dict()),
            "optimizer": _to_cpu(state.optimizer.state_dict()),
            "scheduler": copy.deepcopy(state.scheduler.state_dict()),
            "scaler": copy.deepcopy(state.precision.scaler.state_dict()),
        }
        ema = getattr(state, "ema", None)
        if ema is not None:  # the average must not keep what the rolled-back steps added
            self.snapshot["ema"] = (_to_cpu(ema.module.state_dict()), ema.updates)

    def restore(
        self, state: Any, message: str, before_step: int | None = None, lr_factor: float | None = None
    ) -> RollbackEvent:
        """Restore the snapshot into ``state`` and lower the learning rate by ``lr_factor``.

        Args:
            state: the train state to restore into.
            message: why (kept in the history).
            before_step: restore the newest snapshot taken at or before this step (the oldest kept if
                none is that old) instead of the newest; later snapshots are discarded.
            lr_factor: this rollback's learning-rate multiplier instead of the configured one, in (0, 1].

        Raises:
            RollbackError: after ``max_rollbacks`` rollbacks, with the history of all of them.
        """
        if self.snapshot is None:
            raise RollbackError(f"{message}; no good state to roll back to (no step has succeeded yet)")
        if len(self.history) >= self.max_rollbacks:
            lines = "\n".join(
                f"  step {e.step} → restored step {e.restored_step}, lr × {e.lr_scale:.3g}: {e.message}"
                for e in self.history
            )
            raise RollbackError(
                f"{message}; stability.max_rollbacks={self.max_rollbacks} rollbacks already done and "
                f"training still diverges. History:\n{lines}\nLower optimizer.lr, check the data with "
                "recognizer-doctor, or use trainer.precision=32."
            )
        snap = self.snapshot
        if before_step is not None:
            kept = [s for s in (self.anchor, self.snapshot) if s is not None]
            early = [s for s in kept if s["step"] <= before_step]
            snap = max(early, key=lambda s: s["step"]) if early else min(kept, key=lambda s: s["step"])
            self.snapshot, self.anchor = snap, None  # what came after it is not a good state
        state.model.load_state_dict(snap["model"])
        # copies: on CPU the optimizer would keep the snapshot's own tensors as its state and train them in place,
        # so a second rollback to this snapshot would restore what the diverging steps made of it
        state.optimizer.load_state_dict(_to_cpu(snap["optimizer"]))
        state.scheduler.load_state_dict(_to_cpu(snap["scheduler"]))
        state.precision.scaler.load_state_dict(snap["scaler"])
        if "ema" in snap and getattr(state, "ema", None) is not None:
            state.ema.module.load_state_dict(snap["ema"][0])
            state.ema.updates = snap["ema"][1]
        factor = self.lr_factor if lr_factor is None else min(max(lr_factor, 0.0), 1.0)
        if factor <= 0.0:
            raise ValueError(f"a rollback's learning-rate factor must be in (0, 1], got {lr_factor}")
        self.lr_scale *= factor
        scale = self.lr_scale / snap["lr_scale"]
        scheduler = state.scheduler
        scheduler.base_lrs = [lr * scale for lr in scheduler.base_lrs]
        for group in state.optimizer.param_groups:
            group["lr"] *= scale
            if "initial_lr" in group:
                group["initial_lr"] *= scale
        state.optimizer.zero_grad(set_to_none=True)
        event = RollbackEvent(state.step, snap["step"], self.lr_scale, message)
        self.history.append(event)
        log.warning(
            "rollback %d/%d at step %d: restored the state of step %d, learning rate × %.3g",
            len(self.history),
            self.max_rollbacks,
            state.step,
            snap["step"],
            self.lr_scale,
        )
        return event

    def state_dict(self) -> dict[str, Any]:
        """The learning-rate multiplier and the rollbacks so far (checkpointed: a resumed run keeps
        counting towards ``max_rollbacks``); the snapshot itself is not saved, a resumed run takes a
        fresh one before its first step."""
        return {"lr_scale": self.lr_scale, "history": [asdict(e) for e in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr_scale = float(state["lr_scale"])
        self.history = [RollbackEvent(**e) for e in state.get("history", [])]


def finite_weights(model: torch.nn.Module) -> bool:
    """True when every parameter and buffer of ``model`` is finite (a test and doctor helper)."""
    tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    return all(bool(torch.isfinite(t).all()) for t in tensors)
