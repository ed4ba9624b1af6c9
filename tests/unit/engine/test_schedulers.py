"""LR schedules: warmup that fits the run, explicit counts that win, cosine to the floor."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from recognizer.engine.schedulers import constant, resolve_warmup, warmup_cosine, warmup_cosine_factor


def lrs(scheduler: torch.optim.lr_scheduler.LambdaLR, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize(
    ("total", "expected"),
    [(3750, 113), (100, 3), (9390, 282), (1_000_000, 1000), (1, 1)],  # 3% of the run, at most 1000
)
def test_automatic_warmup_is_a_fraction_of_the_run_capped(total: int, expected: int) -> None:
    assert resolve_warmup(None, total, warmup_fraction=0.03, max_warmup_steps=1000) == expected


def test_explicit_warmup_wins() -> None:
    assert resolve_warmup(1000, 3750, 0.03, 1000) == 1000
    assert resolve_warmup(0, 3750, 0.03, 1000) == 0
    assert resolve_warmup(5000, 100, 0.03, 1000) == 5000  # as given, even beyond the cap


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 100, 0.03, 10), "scheduler.warmup_steps must be >= 0 or null (automatic), got -1"),
        ((None, 100, 1.0, 10), "scheduler.warmup_fraction must be in [0, 1), got 1.0"),
        ((None, 100, 0.03, -1), "scheduler.max_warmup_steps must be >= 0, got -1"),
    ],
)
def test_bad_warmup_settings_are_named(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_warmup(*args)


def test_warmup_cosine_ramps_then_decays_to_the_floor() -> None:
    sched = warmup_cosine(optimizer(), total_steps=100, warmup_steps=None, warmup_fraction=0.1, min_lr_ratio=0.01)
    values = lrs(sched, 101)
    assert values[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])  # 10 warmup steps: 3% would be 3
    assert values[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))  # monotone decay after warmup
    assert values[100] == pytest.approx(0.01)
    assert warmup_cosine_factor(55, 10, 100, 0.0) == pytest.approx(0.5)  # the cosine's midpoint


def test_automatic_warmup_of_the_default_config_on_a_short_run() -> None:
    # kraken's digit-line set: 2,000 lines, batch 16 → 125 steps × 30 epochs; the former fixed 1,000
    # warmup steps were 8 epochs of it, the automatic warmup is under one.
    sched = warmup_cosine(optimizer(1e-3), total_steps=3750)
    values = lrs(sched, 114)
    assert values[112] == pytest.approx(1e-3) and values[111] < 1e-3
    assert values[0] == pytest.approx(1e-3 / 113)


def test_constant_accepts_automatic_warmup() -> None:
    values = lrs(constant(optimizer(), total_steps=200, warmup_steps=None, warmup_fraction=0.05), 20)
    assert values[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert values[10:] == pytest.approx([1.0] * 10)
    assert math.isclose(lrs(constant(optimizer(), total_steps=200), 1)[0], 1.0)  # default: no warmup


def test_a_longer_run_resumes_on_the_new_plan_at_the_current_step() -> None:
    """trainer.max_epochs raised on resume: the schedule is rebuilt and read at the step reached (docs/training.md)."""
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, lr=1.0)
    short = warmup_cosine(opt, total_steps=12, warmup_steps=2)
    for _ in range(6):
        opt.step()
        short.step()
    saved_opt, saved_sched = opt.state_dict(), short.state_dict()
    resumed_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    longer = warmup_cosine(resumed_opt, total_steps=24, warmup_steps=2)  # as recognizer.train builds it
    resumed_opt.load_state_dict(saved_opt)
    longer.load_state_dict(saved_sched)
    resumed_opt.step()
    longer.step()
    expected = warmup_cosine_factor(7, warmup_steps=2, total_steps=24, min_lr_ratio=0.01)
    assert resumed_opt.param_groups[0]["lr"] == pytest.approx(expected)
    assert expected > warmup_cosine_factor(7, warmup_steps=2, total_steps=12, min_lr_ratio=0.01)
