"""Divergence without NaN: the loss climbs and stays far above where it was, every value finite.

Gradient clipping keeps a too-high learning rate from producing inf/NaN, so the non-finite guard
never fires, yet the run is lost: the loss rises, the CER sticks near 100%, and without this
monitor the run ends "fine". Two signals, either one enough:

- **train**: the step loss stays above ``factor`` × its reference for ``patience_steps`` steps in a
  row. The reference is the lowest running median (over the last ``window`` healthy steps) seen so
  far: a median ignores the single hard batch, and the lowest one is where the run had got to (from
  the first step on: a too-high rate can send the loss from 6 to 1,000 within ten steps). Losses of
  an excursion do not enter the window, so a lasting rise cannot become the new normal; each
  excursion is reported once.
- **val**: ``val_patience`` validations in a row whose loss exceeds the best validation loss by
  the factor ``val_factor`` and by at least ``val_min_rise``, *and* that did not improve the
  monitored metric (a loss that rises while the CER still falls is overconfidence, not divergence;
  a loss of 0.02 nats per label rising to 0.03 near the end of a run is overfitting, not divergence:
  a diverging run climbs back towards the untrained loss, several nats per label).

The monitor only judges; the loop warns with the figures and, under
``stability.nonfinite_policy=rollback``, rolls back to the last good state with a lower learning
rate, exactly as for a non-finite step, with two differences that make it recover from a rate that
is far too high (which a non-finite step rarely means):

- it returns to the last snapshot taken at or before the **reference step** (where the run was at its
  best), not to the newest one: a too-high rate damages the weights before the loss shows it, so a
  snapshot taken while the loss still looked normal may already be lost;
- when the loss began to rise while the warmup was still raising the rate, the warmup was a range
  test (Smith, 2017): the rate at the rise is where the loss runs away, and a safe peak sits one to
  two decades below it. The new peak is ``lr_factor`` × the rate at the rise (if that is lower than
  the rollback's own factor would make it), and restoring the early scheduler state replays the
  warmup up to it.

While the train signal is in an excursion, or the last validation was a diverging one,
:attr:`healthy` is False and no rollback snapshot is taken, so the state to return to is one from
before the rise.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Any


class DivergenceMonitor:
    """Flag a run whose finite loss has diverged.

    Args:
        factor: train signal: loss / reference above which a step counts as diverging (> 1).
        patience_steps: train signal: that many diverging steps in a row flag the run (>= 1).
        window: steps in the running median of healthy losses (>= 1).
        min_steps: healthy steps before the train signal judges at all (>= 1; at most ``window``).
        val_factor: val signal: val loss / best val loss above which a validation counts (>= 1).
        val_patience: val signal: that many diverging validations in a row flag the run (0 = off).
        val_min_rise: val signal: the rise over the best val loss must also be at least this (>= 0;
            the loss's units: CTC nats per label).
        lr_factor: a rise during the warmup: new peak rate = this × the rate at the rise, in (0, 1].
    """

    def __init__(
        self,
        factor: float = 3.0,
        patience_steps: int = 50,
        window: int = 50,
        min_steps: int = 1,
        val_factor: float = 1.2,
        val_patience: int = 2,
        lr_factor: float = 0.03,
        val_min_rise: float = 0.1,
    ) -> None:
        if factor <= 1.0:
            raise ValueError(f"stability.divergence_factor must be > 1, got {factor}")
        if patience_steps < 1 or window < 1:
            raise ValueError(
                "stability.divergence_patience_steps and divergence_window must be >= 1, "
                f"got {patience_steps}, {window}"
            )
        if min_steps < 1:
            raise ValueError(f"min_steps must be >= 1, got {min_steps}")
        if val_factor < 1.0 or val_patience < 0:
            raise ValueError(
                f"need stability.divergence_val_factor >= 1 and divergence_val_patience >= 0, got {val_factor}, "
                f"{val_patience}"
            )
        if val_min_rise < 0:
            raise ValueError(f"stability.divergence_val_min_rise must be >= 0, got {val_min_rise}")
        if not 0.0 < lr_factor <= 1.0:
            raise ValueError(f"stability.divergence_lr_factor must be in (0, 1], got {lr_factor}")
        self.lr_factor = lr_factor
        self.factor, self.patience_steps, self.min_steps = factor, patience_steps, min(min_steps, window)
        self.val_factor, self.val_patience, self.val_min_rise = val_factor, val_patience, val_min_rise
        self.losses: deque[float] = deque(maxlen=window)
        self.seen = 0  # healthy steps seen (the window holds the last `window` of them)
        self.reference = float("inf")  # lowest running median so far
        self.reference_step = 0
        self.excursion = 0  # diverging steps in a row
        self.excursion_start_loss = 0.0
        self.excursion_start_lr: float | None = None
        self.last_lr = 0.0  # learning rate of the previous step
        self.rise_lr: float | None = None  # rate at the first step of the flagged rise, if the warmup was raising it
        self.flagged = False  # this excursion was reported (one warning per excursion)
        self.best_val_loss = float("inf")
        self.bad_validations = 0
        self.events = 0  # divergences flagged so far

    @property
    def healthy(self) -> bool:
        """False during a train excursion or after a diverging validation (no rollback snapshot then)."""
        return self.excursion == 0 and self.bad_validations == 0

    def update_train(self, step: int, loss: float, lr: float = 0.0) -> str | None:
        """Record the loss of an applied step (taken at learning rate ``lr``); a message when the run has diverged."""
        rising_lr, self.last_lr = lr > self.last_lr, lr
        if self.seen >= self.min_steps and loss > self.factor * self.reference:
            self.excursion += 1
            if self.excursion == 1:
                self.excursion_start_loss = loss
                self.excursion_start_lr = lr if rising_lr else None
            if self.excursion >= self.patience_steps and not self.flagged:
                during_warmup = ""
                if self.excursion_start_lr is not None:
                    during_warmup = f" (the rise began in the warmup, at lr {self.excursion_start_lr:.3g})"
                message = (
                    f"training diverged at step {step}: the train loss has stayed above {self.factor:g} × "
                    f"{self.reference:.4g} (its lowest running median, at step {self.reference_step}) for "
                    f"{self.excursion} steps: {self.excursion_start_loss:.4g} at the start of the rise"
                    f"{during_warmup}, {loss:.4g} now"
                )
                self.flagged = True
                self.rise_lr = self.excursion_start_lr
                self.events += 1
                return message
            return None
        self.excursion, self.flagged = 0, False
        self.losses.append(loss)
        self.seen += 1
        if self.seen >= self.min_steps:
            median = statistics.median(self.losses)
            if median < self.reference:
                self.reference, self.reference_step = median, step
        return None

    def update_val(self, step: int, val_loss: float, improved: bool) -> str | None:
        """Record a validation (``improved``: the monitored metric improved); a message when diverged."""
        if self.val_patience == 0:
            return None
        threshold = max(self.val_factor * self.best_val_loss, self.best_val_loss + self.val_min_rise)
        diverging = not improved and val_loss > threshold
        self.best_val_loss = min(self.best_val_loss, val_loss)
        self.bad_validations = self.bad_validations + 1 if diverging else 0
        if self.bad_validations < self.val_patience:
            return None
        message = (
            f"training diverged at step {step}: {self.bad_validations} validations in a row without improvement "
            f"and with val loss above {self.val_factor:g} × the best {self.best_val_loss:.4g} (now {val_loss:.4g})"
        )
        self.bad_validations = 0
        self.rise_lr = None  # the val signal says nothing about which rate is safe
        self.events += 1
        return message

    def lr_multiplier(self, peak_lr: float) -> float | None:
        """For the rollback of the divergence just flagged: the factor that brings the peak rate ``peak_lr``
        to ``lr_factor`` × the rate at the rise, when the rise began during the warmup; else None."""
        if self.rise_lr is None or peak_lr <= 0:
            return None
        return self.lr_factor * self.rise_lr / peak_lr

    def reset_excursion(self) -> None:
        """After a rollback: judge the restored state afresh against the same reference."""
        self.excursion, self.flagged = 0, False
        self.bad_validations = 0
        self.rise_lr = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self.losses),
            "seen": self.seen,
            "reference": self.reference,
            "reference_step": self.reference_step,
            "excursion": self.excursion,
            "excursion_start_loss": self.excursion_start_loss,
            "excursion_start_lr": self.excursion_start_lr,
            "last_lr": self.last_lr,
            "flagged": self.flagged,
            "best_val_loss": self.best_val_loss,
            "bad_validations": self.bad_validations,
            "events": self.events,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses.clear()
        self.losses.extend(float(v) for v in state["losses"])
        for key in ("seen", "reference_step", "excursion", "bad_validations", "events"):
            setattr(self, key, int(state[key]))
        for key in ("reference", "excursion_start_loss", "best_val_loss"):
            setattr(self, key, float(state[key]))
        self.flagged = bool(state.get("flagged", False))
        start_lr = state.get("excursion_start_lr")
        self.excursion_start_lr = None if start_lr is None else float(start_lr)
        self.last_lr = float(state.get("last_lr", 0.0))
