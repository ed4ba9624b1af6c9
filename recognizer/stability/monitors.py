"""The stability monitors as one loop callback: rollback, divergence and blank collapse.

They are one callback, not three, because they act on each other: a divergence rolls back to the
rollback's snapshot of the run's best point, and the rollback never snapshots a state the divergence
monitor sees already on its way up. What each one decides is in its own module
(:mod:`~recognizer.stability.rollback`, :mod:`~recognizer.stability.divergence`,
:mod:`~recognizer.stability.collapse`); this module only says when the loop asks them.

Their state goes into every checkpoint as the entries ``rollback``, ``divergence`` and ``collapse``
(None for a monitor that is off), so a resumed run keeps counting towards ``stability.max_rollbacks``
and keeps its loss window.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from recognizer.engine.callbacks import Callback
from recognizer.stability.collapse import BlankCollapseMonitor
from recognizer.stability.divergence import DivergenceMonitor
from recognizer.stability.rollback import Rollback

log = logging.getLogger(__name__)


class StabilityMonitors(Callback):
    """Rollback, divergence and blank-collapse monitors behind the loop's hooks; each may be None (off).

    Args:
        rollback: keeps the last good state; restores it on a rejected step (``nonfinite_policy=rollback``)
            and on a divergence.
        divergence: watches the train and val losses of finite steps; warns, or rolls back with ``rollback``.
        collapse: warns when validation outputs are (nearly) all blank.
    """

    def __init__(
        self,
        rollback: Rollback | None = None,
        divergence: DivergenceMonitor | None = None,
        collapse: BlankCollapseMonitor | None = None,
    ) -> None:
        self.rollback, self.divergence, self.collapse = rollback, divergence, collapse

    def on_step_start(self, state: Any) -> None:
        if self.rollback is not None and self.rollback.snapshot is None:
            self.rollback.take(state)  # the state before the first step is the first good state

    def on_step_end(self, state: Any, applied: bool, loss: float, lr: float) -> None:
        diverged = None
        if self.divergence is not None and applied:
            diverged = self.divergence.update_train(state.step, loss, lr)
        if diverged is not None:
            self.handle_divergence(state, diverged)
        elif self.rollback is not None:  # never snapshot a state that is already on its way up
            monitor = self.divergence
            healthy = monitor is None or monitor.healthy
            self.rollback.maybe_snapshot(state, applied and healthy, monitor.reference_step if monitor else None)

    def on_step_rejected(self, state: Any, message: str) -> bool:
        if self.rollback is None:
            return False
        self.rollback.restore(state, message)
        return True

    def on_validation_end(self, state: Any, metrics: Mapping[str, float], improved: bool) -> None:
        if self.collapse is not None:
            self.collapse.update(state.step, metrics["blank"], metrics["empty"])
        if self.divergence is not None:
            diverged = self.divergence.update_val(state.step, metrics["loss"], improved)
            if diverged is not None:
                self.handle_divergence(state, diverged)

    def handle_divergence(self, state: Any, message: str) -> None:
        """A finite loss diverged: warn; with a rollback, restore the last good state with a lower
        learning rate, as for a non-finite step.

        Raises:
            RollbackError: the rollback after ``stability.max_rollbacks``, with the history.
        """
        if self.rollback is None:
            log.warning(
                "%s. Lower optimizer.lr (recognizer-lr-find suggests one for your data), or train with "
                "stability=rollback to roll back and lower it automatically",
                message,
            )
            return
        log.warning("%s — rolling back", message)
        monitor = self.divergence
        if monitor is None:
            self.rollback.restore(state, message)
            return
        # Back to where the run was at its best; a rise during the warmup also sets the new peak rate.
        peak_lr = float(state.scheduler.base_lrs[0])
        lr_factor = monitor.lr_multiplier(peak_lr)
        if lr_factor is not None:
            lr_factor = min(lr_factor, self.rollback.lr_factor)
            log.warning(
                "the warmup ran into the divergence: peak learning rate %.3g → %.3g", peak_lr, peak_lr * lr_factor
            )
        self.rollback.restore(state, message, before_step=monitor.reference_step, lr_factor=lr_factor)
        monitor.reset_excursion()

    def checkpoint_items(self) -> dict[str, Any]:
        return {
            "collapse": self.collapse.state_dict() if self.collapse else None,
            "rollback": self.rollback.state_dict() if self.rollback else None,
            "divergence": self.divergence.state_dict() if self.divergence else None,
        }

    def load_checkpoint_items(self, ckpt: Mapping[str, Any]) -> None:
        for name in ("collapse", "rollback", "divergence"):  # older checkpoints lack some of them
            monitor = getattr(self, name)
            if monitor is not None and ckpt.get(name) is not None:
                monitor.load_state_dict(ckpt[name])
