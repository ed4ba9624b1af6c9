"""Tests for recognizer.stability.guard.NonFiniteGuard."""

import logging
import math
import re

import pytest
import torch

from recognizer.stability.guard import NonFiniteGuard, NonFiniteStepError

NAN = float("nan")
INF = float("inf")
IDS = ["s-a", "s-b", "s-c"]
FINITE = torch.tensor([0.5, 1.0, 2.0])


def test_finite_step_is_applied():
    guard = NonFiniteGuard()
    assert guard.check(1, 0.7, 3.0, FINITE, IDS) is True
    assert guard.consecutive == 0
    assert guard.skipped == 0


def test_invalid_policy():
    with pytest.raises(ValueError, match="policy"):
        NonFiniteGuard("ignore")


def test_raise_names_step_loss_norm_and_bad_samples():
    guard = NonFiniteGuard("raise")
    per_sample = torch.tensor([0.5, INF, NAN])
    with pytest.raises(NonFiniteStepError) as e:
        guard.check(17, NAN, 4.25, per_sample, IDS)
    msg = str(e.value)
    assert "step 17" in msg
    assert "loss=nan" in msg
    assert "grad_norm=4.25" in msg
    assert "['s-b', 's-c']" in msg
    assert "s-a" not in msg
    assert "nonfinite_policy=raise" in msg


def test_raise_on_non_finite_gradient_with_finite_loss():
    guard = NonFiniteGuard("raise")
    with pytest.raises(NonFiniteStepError, match=r"grad_norm=inf.*non-finite gradient") as e:
        guard.check(3, 1.5, INF, FINITE, IDS)
    assert "loss=1.5" in str(e.value)
    assert "s-a" in str(e.value)  # no single culprit: the batch is listed


def test_raise_on_non_finite_batch_loss_with_finite_samples():
    guard = NonFiniteGuard("raise")
    with pytest.raises(NonFiniteStepError, match="every sample loss finite"):
        guard.check(3, INF, 1.0, FINITE, IDS)


def test_skip_up_to_max_consecutive_then_raise():
    guard = NonFiniteGuard("skip", max_consecutive_skips=2)
    assert guard.check(1, NAN, NAN, torch.tensor([NAN, 1.0, 1.0]), IDS) is False
    assert guard.check(2, NAN, NAN, torch.tensor([NAN, 1.0, 1.0]), IDS) is False
    assert guard.consecutive == 2
    with pytest.raises(NonFiniteStepError) as e:
        guard.check(3, NAN, NAN, torch.tensor([NAN, 1.0, 1.0]), IDS)
    msg = str(e.value)
    assert "step 3" in msg
    assert "3 non-finite steps in a row" in msg
    assert "max_consecutive_skips=2" in msg
    assert "['s-a']" in msg


def test_zero_skips_allowed_raises_at_once():
    guard = NonFiniteGuard("skip", max_consecutive_skips=0)
    with pytest.raises(NonFiniteStepError):
        guard.check(1, INF, 1.0, FINITE, IDS)


def test_finite_step_resets_consecutive_count():
    guard = NonFiniteGuard("skip", max_consecutive_skips=2)
    pattern = [NAN, NAN, 0.3, NAN, NAN, 0.2, NAN, NAN]
    results = [guard.check(step, loss, 1.0, FINITE, IDS) for step, loss in enumerate(pattern, 1)]
    assert results == [not math.isnan(loss) for loss in pattern]
    assert guard.consecutive == 2
    assert guard.skipped == 6
    with pytest.raises(NonFiniteStepError):
        guard.check(9, NAN, 1.0, FINITE, IDS)


def test_state_dict_round_trip():
    guard = NonFiniteGuard("skip", max_consecutive_skips=3)
    for step in (1, 2):
        guard.check(step, NAN, 1.0, FINITE, IDS)
    state = guard.state_dict()
    assert state == {"consecutive": 2, "skipped": 2, "overflows": 0, "consecutive_overflows": 0}

    restored = NonFiniteGuard("skip", max_consecutive_skips=3)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    # the count goes on where it left: one more skip, then the 4th in a row raises
    assert restored.check(3, NAN, 1.0, FINITE, IDS) is False
    with pytest.raises(NonFiniteStepError, match=re.escape("4 non-finite steps in a row")):
        restored.check(4, NAN, 1.0, FINITE, IDS)


def test_many_bad_samples_are_truncated():
    ids = [f"id{i}" for i in range(12)]
    with pytest.raises(NonFiniteStepError) as e:
        NonFiniteGuard().check(1, NAN, NAN, torch.full((12,), NAN), ids)
    msg = str(e.value)
    assert "id9" in msg and "id10" not in msg
    assert "..." in msg


def test_overflow_rule_and_counts_survive_a_checkpoint(caplog: pytest.LogCaptureFixture):
    guard = NonFiniteGuard("skip", min_loss_scale=1.0, max_consecutive_overflows=4)
    with caplog.at_level(logging.INFO, logger="recognizer.stability.guard"):
        assert guard.overflow(1, 2.0**16) == ""  # ordinary: GradScaler may skip it
        assert guard.overflow(2, 2.0**15) == ""
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.WARNING]  # half the limit: a warning
    restored = NonFiniteGuard("skip", min_loss_scale=1.0, max_consecutive_overflows=4)
    restored.load_state_dict(guard.state_dict())
    assert (restored.overflows, restored.consecutive_overflows) == (2, 2)
    assert restored.overflow(3, 1.0) == "fp16 gradient overflow at loss scale 1 <= stability.min_loss_scale=1"
    restored.load_state_dict({"consecutive": 0, "skipped": 0})  # a checkpoint from before the rule
    assert restored.overflows == 0 and restored.consecutive_overflows == 0


def test_overflow_limits_are_validated():
    expected = "stability.min_loss_scale and stability.max_consecutive_overflows must be >= 0, got 0.0001 and -1"
    with pytest.raises(ValueError, match=re.escape(expected)):
        NonFiniteGuard(max_consecutive_overflows=-1)
