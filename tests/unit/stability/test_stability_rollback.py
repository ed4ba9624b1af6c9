"""Policy rollback, blank-collapse warnings, per-step telemetry options and the CTC backend switch."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from recognizer import CONFIG_DIR
from recognizer.alphabet import Alphabet
from recognizer.checkpoint import load_checkpoint, save_checkpoint
from recognizer.ctc import CTCLoss
from recognizer.data.batching import Batch
from recognizer.engine.loop import TrainState, evaluate_loader, train_step
from recognizer.engine.precision import resolve_precision
from recognizer.engine.schedulers import constant
from recognizer.models import CRNN
from recognizer.stability.collapse import BlankCollapseMonitor, blank_frames
from recognizer.stability.guard import NonFiniteGuard, NonFiniteStepError
from recognizer.stability.monitors import StabilityMonitors
from recognizer.stability.rollback import Rollback, RollbackError, finite_weights
from recognizer.stability.runtime import NativeCTCLoss, attach_stability, make_ctc


class NanOnCalls(nn.Module):
    """Identity, except that the forward calls numbered in ``bad`` (1-based) return NaN."""

    def __init__(self, bad: set[int] | None = None) -> None:
        super().__init__()
        self.bad = bad
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return x * float("nan") if self.bad is None or self.calls in self.bad else x


def make_state(poison: NanOnCalls, every: int = 2, max_rollbacks: int = 2) -> TrainState:
    torch.manual_seed(0)
    model = CRNN(num_classes=5, height=8, channels=(4,), pools=((2, 2),), rnn_hidden=8, dropout=0.0)
    model.head = nn.Sequential(poison, model.head)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    precision = resolve_precision("32", torch.device("cpu"))
    state = TrainState(model, optimizer, constant(optimizer, 10), precision, NonFiniteGuard("rollback"))
    state.callbacks.append(StabilityMonitors(rollback=Rollback(every, lr_factor=0.5, max_rollbacks=max_rollbacks)))
    return state


def rollback_of(state: TrainState) -> Rollback:
    """The rollback behind the state's stability callback."""
    (monitors,) = [c for c in state.callbacks if isinstance(c, StabilityMonitors)]
    assert monitors.rollback is not None
    return monitors.rollback


def make_batch() -> Batch:
    x = torch.rand(2, 1, 8, 16, generator=torch.Generator().manual_seed(1))
    return Batch(x, torch.full((2,), 16), torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, 2]), ["x", "y"], ["a", "b"])


def params(state: TrainState) -> list[Tensor]:
    return [p.detach().clone() for p in state.model.parameters()]


def test_rollback_restores_the_last_good_state_and_lowers_the_lr() -> None:
    state = make_state(NanOnCalls({4}), every=2)
    batch, ctc = make_batch(), CTCLoss()
    for _ in range(2):
        assert train_step(state, batch, ctc, 1.0).applied
    at_step_2 = params(state)  # snapshot taken after step 2 (every 2 applied steps)
    assert train_step(state, batch, ctc, 1.0).applied  # step 3: not a snapshot step
    result = train_step(state, batch, ctc, 1.0)  # step 4: NaN → rollback to step 2
    assert not result.applied and state.step == 4
    assert all(torch.equal(a, b) for a, b in zip(at_step_2, params(state)))
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-2)
    assert state.scheduler.base_lrs == [pytest.approx(0.5e-2)]
    assert train_step(state, batch, ctc, 1.0).applied  # training goes on at the lower lr
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-2)
    assert [e.restored_step for e in rollback_of(state).history] == [2]
    assert finite_weights(state.model)


def test_repeated_rollbacks_to_one_snapshot_compound_the_lr_factor() -> None:
    state = make_state(NanOnCalls({2, 3}), every=100)
    batch, ctc = make_batch(), CTCLoss()
    train_step(state, batch, ctc, 1.0)  # step 1 healthy; snapshot is the state before step 1
    train_step(state, batch, ctc, 1.0)
    train_step(state, batch, ctc, 1.0)
    assert rollback_of(state).lr_scale == 0.25
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.25e-2)


def test_a_second_rollback_to_one_snapshot_restores_it_as_it_was_taken() -> None:
    """On CPU the optimizer must not train the snapshot's own moment tensors after the first rollback."""
    state = make_state(NanOnCalls({4, 6}), every=3, max_rollbacks=3)
    batch, ctc = make_batch(), CTCLoss()
    for _ in range(3):
        assert train_step(state, batch, ctc, 1.0).applied  # the snapshot is taken after step 3

    def moments() -> list[Tensor]:
        return [t.clone() for s in state.optimizer.state.values() for t in (s["exp_avg"], s["exp_avg_sq"], s["step"])]

    at_step_3 = moments()
    assert not train_step(state, batch, ctc, 1.0).applied  # step 4: NaN → back to step 3
    assert train_step(state, batch, ctc, 1.0).applied  # step 5: trains on from it
    assert not train_step(state, batch, ctc, 1.0).applied  # step 6: NaN → back to step 3 again
    assert [e.restored_step for e in rollback_of(state).history] == [3, 3]
    assert all(torch.equal(a, b) for a, b in zip(at_step_3, moments(), strict=True))


def test_rollbacks_are_bounded_and_the_error_has_the_history() -> None:
    state = make_state(NanOnCalls(), max_rollbacks=2)  # NaN on every call: training cannot recover
    batch, ctc = make_batch(), CTCLoss()
    before = params(state)
    train_step(state, batch, ctc, 1.0)
    train_step(state, batch, ctc, 1.0)
    with pytest.raises(
        RollbackError, match=r"max_rollbacks=2 rollbacks already done.*History:\n  step 1 → restored step 0, lr × 0\.5"
    ):
        train_step(state, batch, ctc, 1.0)
    assert isinstance(RollbackError("x"), NonFiniteStepError)  # sweeps treat it as a diverged job
    assert all(torch.equal(a, b) for a, b in zip(before, params(state)))


def test_rollback_count_and_lr_scale_survive_a_checkpoint(tmp_path: Path) -> None:
    state = make_state(NanOnCalls({2}), every=100, max_rollbacks=1)
    batch, ctc = make_batch(), CTCLoss()
    train_step(state, batch, ctc, 1.0)
    train_step(state, batch, ctc, 1.0)  # rollback 1 of 1
    save_checkpoint(
        {
            **state.state_dict(),
            "alphabet": ["a"],
            "config": {"model": {"_target_": "recognizer.models.CRNN"}, "data": {}},
        },
        tmp_path / "last.ckpt",
    )

    resumed = make_state(NanOnCalls({1}), every=100, max_rollbacks=1)  # NaN at once after the resume
    resumed.load_state_dict(load_checkpoint(tmp_path / "last.ckpt"))
    assert rollback_of(resumed).lr_scale == 0.5 and resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-2)
    with pytest.raises(RollbackError, match=r"max_rollbacks=1 rollbacks already done.*\n  step 2 → restored step 0"):
        train_step(resumed, batch, ctc, 1.0)  # the budget was spent before the interruption


def test_rollback_options_are_validated() -> None:
    with pytest.raises(ValueError, match=r"rollback_lr_factor must be in \(0, 1\], got 2"):
        Rollback(lr_factor=2)
    with pytest.raises(ValueError, match="rollback_every_n_steps must be >= 1, got 0"):
        Rollback(every_n_steps=0)


def test_blank_frames_counts_only_valid_frames() -> None:
    logits = torch.zeros(2, 4, 3)
    logits[0, :, 0] = 1  # all blank
    logits[1, :2, 2] = 1  # two non-blank frames, then blanks (index 0 wins ties)
    assert blank_frames(logits, torch.tensor([4, 3])) == (5, 7)


def test_collapse_warns_after_patience_and_only_after_warmup(caplog: pytest.LogCaptureFixture) -> None:
    monitor = BlankCollapseMonitor(warmup_steps=100, patience=2, threshold=0.95)
    assert monitor.update(50, 1.0, 1.0) is None  # warm-up: expected to be blank
    assert monitor.update(100, 1.0, 1.0) is None
    assert monitor.update(200, 0.5, 0.1) is None  # recovered: the count restarts
    assert monitor.update(300, 0.99, 0.97) is None
    with caplog.at_level(logging.WARNING):
        message = monitor.update(400, 0.99, 1.0)
    assert message is not None and message.startswith("blank collapse: at step 400, 99.0% of output frames")
    assert "class count" in message and "padded with 0" in message
    assert "optimizer.lr" in message and message in caplog.text


def test_evaluate_reports_blank_statistics_of_a_collapsed_model() -> None:
    model = CRNN(num_classes=3, height=8, channels=(4,), pools=((2, 2),), rnn_hidden=4)
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([100.0, 0.0, 0.0]))  # blank wins everywhere
    batch = make_batch()
    batch.targets = torch.tensor([[1, 2], [2, 1]])
    metrics, _ = evaluate_loader(
        model, [batch], CTCLoss(), Alphabet(["a", "b"]), resolve_precision("32", torch.device("cpu"))
    )
    assert metrics["blank"] == 1.0 and metrics["empty"] == 1.0 and metrics["cer"] == 1.0


def stability_node(**overrides: object) -> DictConfig:
    node = OmegaConf.load(Path(CONFIG_DIR) / "stability" / "default.yaml")
    return OmegaConf.merge(node, overrides)


def test_attach_stability_builds_the_configured_parts(tmp_path: Path) -> None:
    state = make_state(NanOnCalls(set()))
    state.callbacks.clear()
    monitors = attach_stability(state, stability_node(nonfinite_policy="rollback", rollback_every_n_steps=7), tmp_path)
    assert state.callbacks == [monitors] and state.inspector.folder == tmp_path / "nonfinite"
    assert monitors.rollback is not None and monitors.rollback.every_n_steps == 7
    assert monitors.collapse is not None and monitors.collapse.patience == 2
    assert monitors.divergence is not None
    plain = make_state(NanOnCalls(set()))
    plain.callbacks.clear()
    quiet = attach_stability(plain, stability_node(collapse_patience=0, divergence_check=False), tmp_path)
    assert quiet.rollback is None and quiet.collapse is None and quiet.divergence is None


def test_native_ctc_disables_cudnn_only_around_the_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    original = torch.nn.functional.ctc_loss

    def spy(*args, **kwargs):
        seen.append(torch.backends.cudnn.enabled)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "ctc_loss", spy)
    assert isinstance(make_ctc(stability_node()), NativeCTCLoss)
    assert type(make_ctc(stability_node(cudnn_ctc=True))) is CTCLoss
    logits, lengths = torch.randn(1, 5, 3), torch.tensor([5])
    make_ctc(stability_node())(logits, lengths, torch.tensor([[1, 2]]), torch.tensor([2]))
    make_ctc(stability_node(cudnn_ctc=True))(logits, lengths, torch.tensor([[1, 2]]), torch.tensor([2]))
    assert seen == [False, torch.backends.cudnn.enabled]
