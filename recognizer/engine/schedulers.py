"""Learning-rate schedules as pure functions of the step, wrapped in ``LambdaLR``.

Configs build them with ``_partial_: true``; the engine supplies ``optimizer`` and
``total_steps`` (known only once the data is loaded).
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup from 0 to 1 over ``warmup_steps``, then cosine to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 1000, min_lr_ratio: float = 0.01
) -> LambdaLR:
    """Linear warmup then cosine annealing over ``total_steps``."""
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}")
    if warmup_steps == 0:
        warmup_steps = 1
    fn = partial(warmup_cosine_factor, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio)
    return LambdaLR(optimizer, fn)


def constant_factor(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def constant(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """Constant LR after an optional linear warmup (``total_steps`` is accepted and unused)."""
    return LambdaLR(optimizer, partial(constant_factor, warmup_steps=warmup_steps))
