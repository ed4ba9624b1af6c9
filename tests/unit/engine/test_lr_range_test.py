"""The learning-rate range test: its suggestion rules on hand-made curves, and the command end to end."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import pytest

from recognizer.engine.lr_range_test import LRFindOptions, exponential_factor, smooth, steepest, suggest, valley
from recognizer.lr_find import find_lr
from tests.conftest import compose_config, tiny_overrides
from tests.helpers.runs import run_cli


def curve(n: int = 100) -> tuple[list[float], list[float]]:
    """A textbook range-test curve over 1e-6..1: flat, a fall between 1e-4 and 1e-2, then a blow-up."""
    lrs = [1e-6 * 1e6 ** (i / (n - 1)) for i in range(n)]
    losses = []
    for lr in lrs:
        x = math.log10(lr)  # -6 .. 0
        fall = 3.0 / (1 + math.exp(-3 * (x + 3)))  # a 3-unit drop centred at 1e-3
        rise = 0.0 if x < -1.5 else 10 * (x + 1.5) ** 2  # divergence past ~3e-2
        losses.append(6.0 - fall + rise)
    return lrs, losses


def test_exponential_schedule_spans_the_range() -> None:
    assert exponential_factor(0, 1e6, 200) == 1.0
    assert exponential_factor(199, 1e6, 200) == pytest.approx(1e6)
    assert exponential_factor(99, 100.0, 199) == pytest.approx(10.0)


def test_smoothing_is_bias_corrected() -> None:
    assert smooth([4.0, 4.0, 4.0], 0.9) == pytest.approx([4.0, 4.0, 4.0])  # no pull towards 0
    assert smooth([1.0, 3.0], 0.0) == [1.0, 3.0]


def test_suggestions_on_a_textbook_curve() -> None:
    lrs, losses = curve()
    found = suggest(lrs, losses)
    assert found["steepest"] == pytest.approx(1e-3, rel=0.2)  # the centre of the fall
    # the curve falls all the way from 1e-6 to its minimum near 3e-2: valley takes a point a third
    # to a half of the way along that stretch (log scale), on the falling side, below the minimum's rate
    assert 1e-4 <= found["valley"] <= 1e-3
    lowest = lrs[losses.index(min(losses))]
    assert found["minimum"] == pytest.approx(lowest / 10)


def test_valley_and_steepest_need_a_curve() -> None:
    assert valley([1.0, 0.5]) is None
    assert steepest([1e-3, 1e-2], [1.0, 0.5]) is None
    assert valley([3.0, 2.0, 1.0, 0.5]) in range(4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_lr": 1.0, "max_lr": 0.1}, "need 0 < lr_find.min_lr < lr_find.max_lr, got 1.0, 0.1"),
        ({"num_steps": 5}, "lr_find.num_steps must be >= 10, got 5"),
        ({"method": "best"}, "lr_find.method must be one of ('valley', 'steepest', 'minimum'), got 'best'"),
    ],
)
def test_bad_options_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        LRFindOptions(**kwargs)


def test_range_test_on_embedded_data_writes_curve_and_suggests(data_root: Path, tmp_path: Path) -> None:
    extra = ["lr_find.num_steps=30", "lr_find.min_lr=1e-5", "lr_find.max_lr=100"]
    cfg = compose_config("lr_find", tiny_overrides(data_root, tmp_path, *extra))
    result = find_lr(cfg)
    assert len(result.lrs) <= 30 and result.lrs[0] == pytest.approx(1e-5)
    assert all(b > a for a, b in itertools.pairwise(result.lrs))  # geometric, rising
    assert result.stopped_early  # lr 100 makes the loss run away within the range
    assert result.suggestion is not None and 1e-5 <= result.suggestion <= result.lrs[-1]
    saved = json.loads((tmp_path / "lr_find.json").read_text())
    assert saved["suggestion"] == result.suggestion and saved["method"] == "valley"
    assert (tmp_path / "lr_find.png").stat().st_size > 10_000


@pytest.mark.slow
def test_console_script_prints_the_suggestion(data_root: Path, tmp_path: Path) -> None:
    overrides = [*tiny_overrides(data_root, tmp_path)[:-1], "lr_find.num_steps=20"]  # [:-1]: Hydra's run dir
    run = run_cli("recognizer-lr-find", *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"suggested optimizer\.lr=[\d.e-]+ \(valley; steepest [\d.e-]+, minimum [\d.e-]+\)", run.stdout)
    assert (tmp_path / "run" / "lr_find.png").is_file()
