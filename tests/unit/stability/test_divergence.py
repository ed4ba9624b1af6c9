"""Divergence without NaN: the monitor's two signals, and what the loop does with them."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from recognizer.engine.loop import TrainState
from recognizer.engine.precision import resolve_precision
from recognizer.engine.schedulers import constant
from recognizer.models import CRNN
from recognizer.stability.divergence import DivergenceMonitor
from recognizer.stability.guard import NonFiniteGuard
from recognizer.stability.monitors import StabilityMonitors
from recognizer.stability.rollback import Rollback, RollbackError


def feed(monitor: DivergenceMonitor, losses: list[float], start: int = 1) -> list[tuple[int, str]]:
    events = []
    for step, loss in enumerate(losses, start):
        message = monitor.update_train(step, loss)
        if message is not None:
            events.append((step, message))
    return events


def test_a_falling_noisy_loss_is_never_flagged() -> None:
    gen = torch.Generator().manual_seed(0)
    # CTC-like: high start, steep fall, then a noisy floor with single hard batches 5× the floor
    losses = [30.0 * 0.97**i + 0.05 for i in range(300)]
    noise = (torch.rand(300, generator=gen) * 0.05).tolist()
    losses = [v + n + (0.25 if i % 37 == 0 else 0.0) for i, (v, n) in enumerate(zip(losses, noise))]
    monitor = DivergenceMonitor(factor=3.0, patience_steps=20, window=20)
    assert feed(monitor, losses) == []
    assert monitor.healthy


def test_a_lasting_rise_is_flagged_with_its_figures() -> None:
    monitor = DivergenceMonitor(factor=3.0, patience_steps=5, window=10)
    events = feed(monitor, [1.0] * 20 + [2.0] * 5 + [4.0, 5.0, 6.0, 7.0, 8.0])
    assert events == [
        (
            30,
            "training diverged at step 30: the train loss has stayed above 3 × 1 (its lowest running median, at "
            "step 1) for 5 steps: 4 at the start of the rise, 8 now",
        )
    ]
    # 2.0 (2× the reference) was not an excursion and entered the window; the reference stays the lowest
    # median; the excursion goes on after its warning (no rollback snapshot while it lasts)
    assert monitor.reference == 1.0 and not monitor.healthy


def test_a_rise_from_the_first_steps_is_flagged_once_per_excursion() -> None:
    # lr=30 on the embedded digits: 6.5 at step 1, hundreds within ten steps, and it stays there
    monitor = DivergenceMonitor(factor=3.0, patience_steps=5, window=10)
    events = feed(monitor, [6.5, 20.0, 150.0, 400.0] + [500.0] * 20)
    assert [step for step, _ in events] == [6]  # one warning, not one every 5 steps
    assert "above 3 × 6.5 (its lowest running median, at step 1)" in events[0][1]
    assert not monitor.healthy
    monitor.reset_excursion()  # after a rollback the next excursion is reported again
    assert [step for step, _ in feed(monitor, [500.0] * 5, start=25)] == [29]


def test_healthy_is_false_during_an_excursion_and_a_short_spike_resets() -> None:
    monitor = DivergenceMonitor(factor=3.0, patience_steps=5, window=10)
    feed(monitor, [1.0] * 10)
    assert feed(monitor, [10.0] * 4, start=11) == []
    assert not monitor.healthy  # no rollback snapshot of a state on its way up
    assert feed(monitor, [1.0], start=15) == [] and monitor.healthy  # a spike of 4 steps < patience


def test_val_signal_needs_a_rise_without_improvement() -> None:
    monitor = DivergenceMonitor(val_factor=1.2, val_patience=2)
    assert monitor.update_val(100, 467.0, improved=True) is None
    assert monitor.update_val(200, 600.0, improved=True) is None  # the CER improved: overconfidence, not divergence
    assert monitor.update_val(300, 610.0, improved=False) is None  # one diverging validation
    assert not monitor.healthy
    assert monitor.update_val(400, 630.0, improved=False) == (
        "training diverged at step 400: 2 validations in a row without improvement and with val loss above "
        "1.2 × the best 467 (now 630)"
    )
    assert monitor.update_val(500, 500.0, improved=False) is None  # within 1.2 × best: no count


def test_a_small_val_loss_creeping_up_is_not_divergence() -> None:
    """The late FSDD run that was flagged: best 0.0214, then 0.0276, 0.0285, 0.0282 without improvement."""
    monitor = DivergenceMonitor()  # val_factor 1.2, val_patience 2, val_min_rise 0.1
    assert monitor.update_val(3621, 0.0214, improved=True) is None
    assert [monitor.update_val(s, v, improved=False) for s, v in [(3834, 0.0285), (3905, 0.0282)]] == [None, None]
    assert monitor.healthy
    strict = DivergenceMonitor(val_min_rise=0.0)  # the ratio alone flags it
    strict.update_val(3621, 0.0214, improved=True)
    strict.update_val(3834, 0.0285, improved=False)
    assert strict.update_val(3905, 0.0282, improved=False) is not None
    rising = DivergenceMonitor()  # a real rise, back towards the untrained loss, is flagged
    rising.update_val(100, 0.4, improved=True)
    assert [rising.update_val(s, v, improved=False) for s, v in [(200, 0.9), (300, 1.6)]][1] is not None


def test_state_round_trips() -> None:
    monitor = DivergenceMonitor(patience_steps=3, window=4)
    feed(monitor, [5.0, 4.0, 3.0, 2.0, 9.0])
    monitor.update_val(5, 2.0, improved=True)
    copy = DivergenceMonitor(patience_steps=3, window=4)
    copy.load_state_dict(monitor.state_dict())
    assert copy.state_dict() == monitor.state_dict()
    assert feed(copy, [9.0, 9.0], start=6) == feed(monitor, [9.0, 9.0], start=6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"factor": 1.0}, "stability.divergence_factor must be > 1, got 1.0"),
        ({"window": 0}, "stability.divergence_patience_steps and divergence_window must be >= 1, got 50, 0"),
        ({"val_factor": 0.5}, "need stability.divergence_val_factor >= 1 and divergence_val_patience >= 0"),
        ({"val_min_rise": -0.1}, "stability.divergence_val_min_rise must be >= 0, got -0.1"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        DivergenceMonitor(**kwargs)


def tiny_state(policy: str) -> tuple[TrainState, StabilityMonitors]:
    """A train state and its monitors: divergence, and a rollback under the rollback policy."""
    torch.manual_seed(0)
    model = CRNN(num_classes=5, height=8, channels=(4,), pools=((2, 2),), rnn_hidden=8, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    precision = resolve_precision("32", torch.device("cpu"))
    state = TrainState(model, optimizer, constant(optimizer, 10), precision, NonFiniteGuard(policy))
    rollback = Rollback(every_n_steps=1, lr_factor=0.5, max_rollbacks=1) if policy == "rollback" else None
    monitors = StabilityMonitors(rollback=rollback, divergence=DivergenceMonitor())
    state.callbacks.append(monitors)
    return state, monitors


def test_without_rollback_the_loop_warns_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    state, monitors = tiny_state("raise")
    before = [p.detach().clone() for p in state.model.parameters()]
    with caplog.at_level(logging.WARNING):
        monitors.handle_divergence(state, "training diverged at step 7: ...")
    assert "training diverged at step 7: .... Lower optimizer.lr (recognizer-lr-find suggests one" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(before, state.model.parameters()))


def test_with_rollback_the_loop_restores_and_lowers_the_lr_then_gives_up() -> None:
    state, monitors = tiny_state("rollback")
    assert monitors.rollback is not None
    monitors.rollback.take(state)
    good = [p.detach().clone() for p in state.model.parameters()]
    with torch.no_grad():
        for p in state.model.parameters():
            p.add_(1.0)  # the state a diverging run reached
    monitors.handle_divergence(state, "training diverged at step 7: ...")
    assert all(torch.equal(a, b) for a, b in zip(good, state.model.parameters()))
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)
    with pytest.raises(RollbackError, match=re.escape("stability.max_rollbacks=1 rollbacks already done")):
        monitors.handle_divergence(state, "training diverged at step 9: ...")


def test_a_rise_during_the_warmup_records_the_rate_at_the_rise() -> None:
    monitor = DivergenceMonitor(factor=3.0, patience_steps=3, window=5, lr_factor=0.03)
    events = []
    for step in range(1, 10):  # warmup: the rate climbs 0.1, 0.2, ...; the loss runs away from step 4
        loss = 6.0 if step < 4 else 60.0
        message = monitor.update_train(step, loss, lr=0.1 * step)
        if message is not None:
            events.append(message)
    assert events == [
        "training diverged at step 6: the train loss has stayed above 3 × 6 (its lowest running median, at step 1) "
        "for 3 steps: 60 at the start of the rise (the rise began in the warmup, at lr 0.4), 60 now"
    ]
    assert monitor.lr_multiplier(peak_lr=2.0) == pytest.approx(0.03 * 0.4 / 2.0)


def test_a_rise_at_a_constant_or_falling_rate_leaves_the_lr_to_the_rollback() -> None:
    monitor = DivergenceMonitor(factor=3.0, patience_steps=3, window=5)
    for step in range(1, 10):
        monitor.update_train(step, 6.0 if step < 4 else 60.0, lr=1.0 - 0.01 * step)
    assert monitor.events == 1 and monitor.lr_multiplier(peak_lr=1.0) is None
    val = DivergenceMonitor(val_factor=1.2, val_patience=1)
    val.update_val(100, 1.0, improved=True)
    assert val.update_val(200, 2.0, improved=False) is not None
    assert val.lr_multiplier(peak_lr=1.0) is None  # the val signal says nothing about the safe rate


def test_divergence_lr_factor_is_checked() -> None:
    with pytest.raises(ValueError, match=re.escape("stability.divergence_lr_factor must be in (0, 1], got 0.0")):
        DivergenceMonitor(lr_factor=0.0)


def test_rollback_keeps_the_newest_snapshot_at_or_before_the_keep_step() -> None:
    state, monitors = tiny_state("rollback")
    rollback = monitors.rollback
    assert rollback is not None
    weights = {}
    for step, keep_step in [(0, 0), (50, 60), (100, 60), (150, 60)]:
        state.step = step
        with torch.no_grad():
            next(state.model.parameters()).fill_(float(step))
        weights[step] = next(state.model.parameters()).detach().clone()
        rollback.take(state, keep_step)
    assert rollback.snapshot is not None and rollback.snapshot["step"] == 150
    assert rollback.anchor is not None and rollback.anchor["step"] == 50  # 100 was dropped: after step 60
    event = rollback.restore(state, "diverged", before_step=60, lr_factor=0.1)
    assert event.restored_step == 50 and torch.equal(next(state.model.parameters()), weights[50])
    assert rollback.snapshot["step"] == 50 and rollback.anchor is None  # the later states are not good ones
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_a_divergence_in_the_warmup_rolls_back_to_the_best_step_with_the_rate_below_the_rise() -> None:
    state, monitors = tiny_state("rollback")
    assert monitors.rollback is not None and monitors.divergence is not None
    monitors.rollback.take(state, keep_step=0)  # step 0: the run's best point
    good = [p.detach().clone() for p in state.model.parameters()]
    state.step = 50
    with torch.no_grad():
        for p in state.model.parameters():
            p.add_(1.0)  # looked fine by its loss, but already damaged
    monitors.rollback.take(state, keep_step=0)
    monitors.divergence.rise_lr = 4e-3  # as update_train records it for a rise during the warmup
    monitors.handle_divergence(state, "training diverged at step 60: ...")
    assert all(torch.equal(a, b) for a, b in zip(good, state.model.parameters()))
    # peak 1e-2; new peak = 0.03 × 4e-3 (below the rollback's own × 0.5)
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.03 * 4e-3)
    assert monitors.rollback.history[-1].restored_step == 0
