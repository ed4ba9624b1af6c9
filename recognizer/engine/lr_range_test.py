"""Learning-rate range test (Smith, 2017; as fastai's ``lr_find`` and Lightning's tuner).

Train from the initial weights for ``num_steps`` steps while the learning rate grows geometrically
from ``min_lr`` to ``max_lr``; record the (smoothed) loss at each rate; stop early once the loss
has run away. A good peak learning rate sits where the loss still falls fast, before the minimum:

- ``valley`` (fastai's default since 2.5): the middle of the longest stretch over which the
  smoothed loss keeps falling — robust to the flat start and the noisy end of the curve;
- ``steepest`` (Lightning's): where the smoothed loss falls fastest per decade;
- ``minimum``: a tenth of the rate at the lowest smoothed loss (fastai's older rule).

The training steps are the loop's own (:func:`recognizer.engine.loop.train_step`: label checks,
fp32 CTC, clipping, the non-finite guard), so the curve is that of the run you would start.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from torch.optim.lr_scheduler import LambdaLR

from recognizer.ctc import CTCLoss
from recognizer.data.batching import Batch

log = logging.getLogger(__name__)

METHODS = ("valley", "steepest", "minimum")


@dataclass
class LRFindOptions:
    """Range-test settings (``recognizer/conf/lr_find.yaml``, node ``lr_find``). See the YAML for each key."""

    min_lr: float = 1e-6
    max_lr: float = 1.0
    num_steps: int = 200
    smoothing: float = 0.9
    stop_factor: float = 4.0
    method: str = "valley"

    def __post_init__(self) -> None:
        if not 0 < self.min_lr < self.max_lr:
            raise ValueError(f"need 0 < lr_find.min_lr < lr_find.max_lr, got {self.min_lr}, {self.max_lr}")
        if self.num_steps < 10:
            raise ValueError(f"lr_find.num_steps must be >= 10, got {self.num_steps}")
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"lr_find.smoothing must be in [0, 1), got {self.smoothing}")
        if self.stop_factor <= 1:
            raise ValueError(f"lr_find.stop_factor must be > 1, got {self.stop_factor}")
        if self.method not in METHODS:
            raise ValueError(f"lr_find.method must be one of {METHODS}, got {self.method!r}")


@dataclass
class LRFindResult:
    """The curve (one entry per step taken) and the suggestions of every method."""

    lrs: list[float]
    losses: list[float]  # raw batch losses
    smoothed: list[float]  # bias-corrected exponential moving average
    stopped_early: bool
    suggestions: dict[str, float | None] = field(default_factory=dict)
    method: str = "valley"

    @property
    def suggestion(self) -> float | None:
        return self.suggestions.get(self.method)

    def to_dict(self) -> dict:
        return asdict(self) | {"suggestion": self.suggestion}


def exponential_factor(step: int, ratio: float, num_steps: int) -> float:
    """LR multiplier of step ``step``: ``ratio ** (step / (num_steps - 1))`` (1 at the start, ``ratio`` at the end)."""
    return ratio ** (step / (num_steps - 1))


def smooth(losses: list[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average (Adam's correction: no pull towards 0 at the start)."""
    out, avg = [], 0.0
    for i, value in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * value
        out.append(avg / (1 - beta**i))
    return out


def valley(losses: list[float]) -> int | None:
    """Index in the middle of the longest decreasing run of ``losses`` (fastai's ``valley``).

    The longest decreasing subsequence (O(n²), n ≤ a few hundred) spans the region where training
    makes progress; fastai takes the point 1/2 of the way into its middle third.
    """
    n = len(losses)
    if n < 3:
        return None
    run = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[end]:
            end = i
            start = end - run[end]
    third = (end - start) / 3
    index = start + int(third) + int(third / 2)
    return min(max(index, 0), n - 1) if end > start else None


def steepest(lrs: list[float], losses: list[float], skip_begin: int = 10, skip_end: int = 1) -> int | None:
    """Index of the steepest fall of ``losses`` per decade of learning rate (Lightning's rule, which
    also skips the first 10 points, where the moving average has not settled, and the last one)."""
    if len(losses) < skip_begin + skip_end + 3:
        return None
    slope = np.gradient(np.asarray(losses), np.log10(np.asarray(lrs)))[skip_begin : len(losses) - skip_end]
    return skip_begin + int(np.argmin(slope))


def suggest(lrs: list[float], smoothed: list[float]) -> dict[str, float | None]:
    """Every method's suggested learning rate (``None`` where the curve is too short)."""
    v, s = valley(smoothed), steepest(lrs, smoothed)
    lowest = int(np.argmin(smoothed)) if smoothed else None
    return {
        "valley": lrs[v] if v is not None else None,
        "steepest": lrs[s] if s is not None else None,
        "minimum": lrs[lowest] / 10 if lowest is not None else None,
    }


def cycle(loader: Iterable[Batch], sampler: object) -> Iterator[Batch]:
    """Batches of successive epochs (the range test may need more steps than one epoch has)."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        yield from loader
        epoch += 1


def lr_range_test(
    state: object, batches: Iterator[Batch], ctc: CTCLoss, grad_clip: float, opts: LRFindOptions
) -> LRFindResult:
    """Run the range test on ``state`` (a fresh :class:`~recognizer.engine.loop.TrainState`; its weights change).

    Args:
        state: model, optimizer (its lr is overwritten), precision and guard; the scheduler is replaced.
        batches: training batches, as many as ``opts.num_steps``.
        ctc: the loss.
        grad_clip: the run's gradient clipping (part of what makes a rate safe).
        opts: range and smoothing.
    """
    from recognizer.engine.loop import train_step  # the loop imports nothing from here

    optimizer = state.optimizer  # type: ignore[attr-defined]
    for group in optimizer.param_groups:
        group["lr"] = opts.min_lr
        group.pop("initial_lr", None)
    ratio = opts.max_lr / opts.min_lr
    state.scheduler = LambdaLR(optimizer, partial(exponential_factor, ratio=ratio, num_steps=opts.num_steps))  # type: ignore[attr-defined]
    lrs: list[float] = []
    losses: list[float] = []
    stopped = False
    best = math.inf
    for _ in range(opts.num_steps):
        lr = optimizer.param_groups[0]["lr"]
        result = train_step(state, next(batches), ctc, grad_clip)  # type: ignore[arg-type]
        if not result.applied or not math.isfinite(result.loss):
            stopped = True  # a non-finite step: the rate is far past usable
            break
        lrs.append(lr)
        losses.append(result.loss)
        current = smooth(losses, opts.smoothing)[-1]
        best = min(best, current)
        if len(losses) > 10 and current > opts.stop_factor * best:
            stopped = True
            break
    smoothed = smooth(losses, opts.smoothing)
    result_ = LRFindResult(lrs, losses, smoothed, stopped, suggest(lrs, smoothed), opts.method)
    log.info(
        "LR range test: %d steps from %.2g to %.2g%s; suggestions %s",
        len(lrs),
        lrs[0] if lrs else opts.min_lr,
        lrs[-1] if lrs else opts.min_lr,
        " (stopped: the loss ran away)" if stopped else "",
        ", ".join(f"{k} {v:.2g}" if v else f"{k} -" for k, v in result_.suggestions.items()),
    )
    return result_


def plot(result: LRFindResult, path: Path, title: str = "") -> Path:
    """Write the curve (raw and smoothed loss against the learning rate, log scale) with the suggestions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=0.8, label="batch loss")
    ax.plot(result.lrs, result.smoothed, color="C0", linewidth=1.8, label="smoothed")
    styles = {"valley": "C3", "steepest": "C2", "minimum": "C1"}
    for method, lr in result.suggestions.items():
        if lr is not None:
            chosen = " (suggested)" if method == result.method else ""
            ax.axvline(lr, color=styles[method], linestyle="--", label=f"{method}: {lr:.2g}{chosen}")
    ax.set_xscale("log")
    if result.smoothed:  # the start of a CTC curve is very high: keep the interesting part in view
        low, high = min(result.smoothed), result.smoothed[0]
        ax.set_ylim(low - 0.05 * (high - low), high + 0.1 * (high - low))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("train loss (CTC, per label)")
    ax.set_title(title or "LR range test")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
