"""Learning-rate schedules as pure functions of the step, wrapped in ``LambdaLR``.

Configs build them with ``_partial_: true``; the engine supplies ``optimizer`` and
``total_steps`` (the planned optimizer steps, ``trainer.max_epochs`` × batches per epoch, known
only once the data is loaded).

Warmup fits the run: with ``warmup_steps=None`` it lasts ``warmup_fraction`` of the planned steps,
at most ``max_warmup_steps`` (:func:`resolve_warmup`). A fixed count suits one data set and one run
length only: the former generic 1,000 steps were 8 of 30 epochs on a 2,000-line set (125 steps per
epoch), and its validation CER stayed at 100% for three epochs, while they are a sliver of a run on
a large corpus. An explicit ``warmup_steps`` always wins.
"""

from __future__ import annotations

import logging
import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

log = logging.getLogger(__name__)


def resolve_warmup(warmup_steps: int | None, total_steps: int, warmup_fraction: float, max_warmup_steps: int) -> int:
    """Warmup length in optimizer steps.

    Args:
        warmup_steps: an explicit count (used as given), or ``None`` for the automatic length.
        total_steps: planned optimizer steps of the whole run.
        warmup_fraction: automatic length as a fraction of ``total_steps``, in [0, 1).
        max_warmup_steps: cap of the automatic length (a long run needs no longer warmup).

    Returns:
        ``warmup_steps`` if given, else ``min(max_warmup_steps, ceil(warmup_fraction × total_steps))``.
    """
    if warmup_steps is not None:
        if warmup_steps < 0:
            raise ValueError(f"scheduler.warmup_steps must be >= 0 or null (automatic), got {warmup_steps}")
        return int(warmup_steps)
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"scheduler.warmup_fraction must be in [0, 1), got {warmup_fraction}")
    if max_warmup_steps < 0:
        raise ValueError(f"scheduler.max_warmup_steps must be >= 0, got {max_warmup_steps}")
    return min(max_warmup_steps, math.ceil(warmup_fraction * total_steps))


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup from 0 to 1 over ``warmup_steps``, then cosine to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int | None = None,
    warmup_fraction: float = 0.03,
    max_warmup_steps: int = 1000,
    min_lr_ratio: float = 0.01,
) -> LambdaLR:
    """Linear warmup (see :func:`resolve_warmup`) then cosine annealing until ``total_steps``."""
    if total_steps < 1:
        raise ValueError(f"need total_steps >= 1, got {total_steps}")
    warmup = resolve_warmup(warmup_steps, total_steps, warmup_fraction, max_warmup_steps)
    log.info("LR schedule: %d warmup steps, cosine to ×%g at step %d", warmup, min_lr_ratio, total_steps)
    fn = partial(warmup_cosine_factor, warmup_steps=max(warmup, 1), total_steps=total_steps, min_lr_ratio=min_lr_ratio)
    return LambdaLR(optimizer, fn)


def constant_factor(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def constant(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int | None = 0,
    warmup_fraction: float = 0.03,
    max_warmup_steps: int = 1000,
) -> LambdaLR:
    """Constant LR after an optional linear warmup (``None``: automatic length, :func:`resolve_warmup`)."""
    warmup = resolve_warmup(warmup_steps, total_steps, warmup_fraction, max_warmup_steps)
    return LambdaLR(optimizer, partial(constant_factor, warmup_steps=warmup))
