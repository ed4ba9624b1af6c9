"""The loop's hooks: what runs around a train step and after a validation, besides the step itself.

:func:`recognizer.engine.loop.fit` knows this one protocol, not the monitors behind it: at each point
below it calls every callback of ``TrainState.callbacks``, in order. A hook that is not overridden
does nothing, so a callback writes only the moments it cares about:

- ``on_fit_start``: once per call of ``fit`` (fresh or resumed), before any step (backbone freeze);
- ``on_step_start``: before each step's forward (rollback: the first good state);
- ``on_step_end``: after a step the guard let through (divergence, rollback snapshot);
- ``on_step_rejected``: after a non-finite step under the rollback policy; True = state restored (rollback);
- ``on_batch_end``: after every batch, whatever happened to its step (backbone freeze);
- ``on_validation_end``: after each validation, before the checkpoints are written (blank collapse, divergence).

A callback's state travels in the checkpoint through ``checkpoint_items`` (top-level entries of the
checkpoint dict) and ``load_checkpoint_items`` (given the whole checkpoint on resume; absent entries
mean an older checkpoint and keep the fresh state).

The step itself (forward, CTC, backward, clipping, the guard's decision, the optimizer step, the
schedule and the weight average) is not a hook: its order is the stability contract and stays in
the loop where it can be read in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Callback:
    """Hooks of the training loop; each does nothing unless a subclass overrides it.

    ``state`` is the loop's :class:`~recognizer.engine.loop.TrainState` (typed ``Any`` here so this
    module imports nothing of the loop).
    """

    def on_fit_start(self, state: Any) -> None:
        """Once per call of ``fit``, before any step (``state.step`` is where a resumed run stands)."""

    def on_step_start(self, state: Any) -> None:
        """Before each step's forward."""

    def on_step_end(self, state: Any, applied: bool, loss: float, lr: float) -> None:
        """After a step the guard let through.

        Args:
            applied: the optimizer really stepped (fp16's GradScaler may skip a step it lowered the scale for).
            loss: the step's loss averaged over ranks.
            lr: the learning rate the step used.
        """

    def on_step_rejected(self, state: Any, message: str) -> bool:
        """After a non-finite step the guard rejected under ``stability.nonfinite_policy=rollback``.

        Returns:
            True if this callback restored a good state (the loop then asks no other callback).
        """
        return False

    def on_batch_end(self, state: Any) -> None:
        """After every batch (``state.step`` counts it, applied or not)."""

    def on_validation_end(self, state: Any, metrics: Mapping[str, float], improved: bool) -> None:
        """After each validation: ``metrics`` without the ``val/`` prefix; ``improved``: a new best monitor value."""

    def checkpoint_items(self) -> dict[str, Any]:
        """Top-level entries this callback adds to every checkpoint (names must not clash with the loop's)."""
        return {}

    def load_checkpoint_items(self, ckpt: Mapping[str, Any]) -> None:
        """Restore from a checkpoint dict (its entries may be absent: an older checkpoint)."""
