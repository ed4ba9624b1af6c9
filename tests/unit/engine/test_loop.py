"""The train step enforces the contract: label checks, non-finite guard, scheduler discipline."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from recognizer.alphabet import UNK, UNK_TEXT, Alphabet
from recognizer.ctc import CTCLoss, FeasibilityError, LabelError
from recognizer.data.batching import Batch
from recognizer.engine.loop import TrainerOptions, TrainState, evaluate_loader, train_step
from recognizer.engine.precision import Precision, resolve_precision
from recognizer.engine.schedulers import constant
from recognizer.models import CRNN
from recognizer.stability.guard import NonFiniteGuard, NonFiniteStepError
from recognizer.stability.localize import NonFiniteInspector
from recognizer.stability.monitors import StabilityMonitors
from recognizer.stability.rollback import Rollback


class PoisonedInput(nn.Module):
    """Passes inputs through, but turns sample 1 into NaN. Placed before the head, where samples
    no longer mix (BatchNorm in training mode would spread one sample's NaN to the whole batch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[1] = float("nan")
        return x


def make_state(policy: str = "raise", poison: bool = False) -> TrainState:
    torch.manual_seed(0)
    model = CRNN(num_classes=5, height=8, channels=(4,), pools=((2, 2),), rnn_hidden=8)
    if poison:
        model.head = nn.Sequential(PoisonedInput(), model.head)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    precision = resolve_precision("32", torch.device("cpu"))
    return TrainState(model, optimizer, constant(optimizer, 10), precision, NonFiniteGuard(policy, 1))


def make_batch(targets: list[list[int]], width: int = 16) -> Batch:
    lengths = torch.tensor([len(t) for t in targets])
    padded = torch.zeros(len(targets), max(1, int(lengths.max())), dtype=torch.long)
    for i, t in enumerate(targets):
        padded[i, : len(t)] = torch.tensor(t)
    n = len(targets)
    return Batch(
        torch.rand(n, 1, 8, width), torch.full((n,), width), padded, lengths, ["x"] * n, [f"line-{i}" for i in range(n)]
    )


def weights(state: TrainState) -> list[torch.Tensor]:
    return [p.detach().clone() for p in state.model.parameters()]


def test_healthy_step_updates_weights_and_scheduler() -> None:
    state = make_state()
    before = weights(state)
    result = train_step(state, make_batch([[1, 2], [3, 4]]), CTCLoss(), grad_clip=1.0)
    assert result.applied and state.step == 1 and state.scheduler.last_epoch == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, weights(state)))


def test_label_id_out_of_range_in_hand_built_batch() -> None:
    state = make_state()
    with pytest.raises(LabelError, match=r"label ids \[5\] outside 1\.\.4 in samples \['line-1'\]"):
        train_step(state, make_batch([[1, 2], [3, 5]]), CTCLoss(), grad_clip=1.0)
    assert state.step == 0


def test_blank_id_inside_a_label_is_rejected() -> None:
    with pytest.raises(LabelError, match="Id 0 is the blank"):
        train_step(make_state(), make_batch([[1, 0, 2]]), CTCLoss(), grad_clip=1.0)


def test_infeasible_batch_is_named_before_the_forward() -> None:
    state = make_state()  # width 8 → 4 frames; [1, 1, 1] needs 5
    with pytest.raises(FeasibilityError, match=r"line-0 \(frames=4, needs 5\)"):
        train_step(state, make_batch([[1, 1, 1]], width=8), CTCLoss(), grad_clip=1.0)


def test_nonfinite_loss_raises_naming_the_sample_and_keeps_weights() -> None:
    state = make_state("raise", poison=True)
    before = weights(state)
    with pytest.raises(NonFiniteStepError, match=r"non-finite step 1: .*samples \['line-1'\]"):
        train_step(state, make_batch([[1, 2], [3, 4], [2]]), CTCLoss(), grad_clip=1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(state)))


def test_skip_policy_skips_without_touching_weights_optimizer_or_scheduler() -> None:
    state = make_state("skip", poison=True)
    before = weights(state)
    result = train_step(state, make_batch([[1, 2], [3, 4]]), CTCLoss(), grad_clip=1.0)
    assert not result.applied and state.step == 1
    assert state.scheduler.last_epoch == 0  # the scheduler steps only with the optimizer
    assert state.optimizer.state == {} or all(int(s["step"]) == 0 for s in state.optimizer.state.values())
    assert all(torch.equal(a, b) and torch.isfinite(b).all() for a, b in zip(before, weights(state)))
    with pytest.raises(NonFiniteStepError, match="2 non-finite steps in a row exceed"):
        train_step(state, make_batch([[1, 2], [3, 4]]), CTCLoss(), grad_clip=1.0)


def test_clipping_bounds_the_update_norm() -> None:
    state = make_state()
    state.optimizer = torch.optim.SGD(state.model.parameters(), lr=1.0)
    state.scheduler = constant(state.optimizer, 10)
    before = weights(state)
    result = train_step(state, make_batch([[1, 2], [3, 4]]), CTCLoss(), grad_clip=1e-3)
    assert result.grad_norm > 1e-3  # the reported norm is before clipping
    delta = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(before, weights(state))))
    assert float(delta) == pytest.approx(1e-3, rel=1e-3)  # SGD lr=1: update = clipped gradient


def test_fp16_on_cpu_is_refused_with_advice() -> None:
    with pytest.raises(ValueError, match="16-mixed needs CUDA"):
        resolve_precision("16-mixed", torch.device("cpu"))


def test_bf16_autocast_on_cpu_trains_with_fp32_loss() -> None:
    state = make_state()
    state.precision = resolve_precision("bf16-mixed", torch.device("cpu"))
    result = train_step(state, make_batch([[1, 2], [3, 4]]), CTCLoss(), grad_clip=1.0)
    assert result.applied and torch.isfinite(torch.tensor(result.loss))


def test_the_training_forward_goes_through_the_wrapper() -> None:
    """``TrainState.train_forward`` (DDP, torch.compile) runs the training forward; the bare model the rest."""
    state = make_state()
    calls = []

    class Counting(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            calls.append(1)
            return self.inner(*args)

    state.train_forward = Counting(state.model)
    assert train_step(state, make_batch([[1, 2], [3, 4]]), CTCLoss(), grad_clip=1.0).applied
    assert calls == [1]


# ----------------------------------------------------------------------------- fp16 GradScaler: overflow or fault


class _NaNBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.full_like(grad, float("nan"))


class NaNGradient(nn.Module):
    """Identity forward whose backward is NaN: a gradient no loss scale can fix (the loss stays finite)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NaNBackward.apply(x)


def scaled_state(policy: str, tmp_path: Path, **limits: float) -> TrainState:
    """A state under an enabled GradScaler (CPU: no autocast needed for its rule) with a NaN gradient."""
    state = make_state(policy)
    state.model.head = nn.Sequential(NaNGradient(), state.model.head)
    state.precision = Precision("16-mixed", torch.device("cpu"), None, torch.amp.GradScaler("cpu", init_scale=16.0))
    state.guard = NonFiniteGuard(policy, 1, **limits)  # type: ignore[arg-type]
    state.inspector = NonFiniteInspector(tmp_path)
    return state


def test_an_overflow_streak_becomes_a_nonfinite_fault_that_raises(tmp_path: Path) -> None:
    state = scaled_state("raise", tmp_path, min_loss_scale=0.0, max_consecutive_overflows=2)
    before = weights(state)
    batch = make_batch([[1, 2], [3, 4]])
    for step in (1, 2):  # ordinary overflows: GradScaler skips and halves the scale
        result = train_step(state, batch, CTCLoss(), grad_clip=1.0)
        assert not result.applied and state.step == step and state.precision.scaler.get_scale() == 16.0 / 2**step
    with pytest.raises(NonFiniteStepError) as error:
        train_step(state, batch, CTCLoss(), grad_clip=1.0)
    message = str(error.value)
    assert re.match(
        r"non-finite step 3: loss=[0-9.]+, grad_norm=nan: finite loss but non-finite gradient; "
        r"batch \['line-0', 'line-1'\]; 3 fp16 gradient overflows in a row exceed "
        r"stability\.max_consecutive_overflows=2 \(loss scale now 4\); ",
        message,
    ), message
    assert "module 'head.0' (NaNGradient)" in message and "nonfinite/step_3.pt" in message
    assert message.endswith("(stability.nonfinite_policy=raise)")
    assert state.guard.overflows == 3 and all(torch.equal(a, b) for a, b in zip(before, weights(state)))


def test_an_overflow_at_the_minimum_loss_scale_is_a_fault(tmp_path: Path) -> None:
    state = scaled_state("raise", tmp_path, min_loss_scale=4.0, max_consecutive_overflows=100)
    batch = make_batch([[1, 2], [3, 4]])
    for _ in range(2):  # scale 16 → 8 → 4
        assert not train_step(state, batch, CTCLoss(), grad_clip=1.0).applied
    with pytest.raises(
        NonFiniteStepError, match=r"step 3: .*; fp16 gradient overflow at loss scale 4 <= stability\.min_loss_scale=4;"
    ):
        train_step(state, batch, CTCLoss(), grad_clip=1.0)


def test_overflow_faults_count_as_skips_under_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = scaled_state("skip", tmp_path, min_loss_scale=0.0, max_consecutive_overflows=1)
    batch = make_batch([[1, 2], [3, 4]])
    with caplog.at_level(logging.INFO, logger="recognizer.stability.guard"):
        assert not train_step(state, batch, CTCLoss(), grad_clip=1.0).applied  # an ordinary overflow
        assert not train_step(state, batch, CTCLoss(), grad_clip=1.0).applied  # a fault, skipped (1 allowed)
    assert state.guard.skipped == 1 and state.guard.overflows == 2 and state.scheduler.last_epoch == 0
    overflow, skipped = (r for r in caplog.records if r.name == "recognizer.stability.guard")
    assert overflow.levelno == logging.WARNING  # 1 in a row is already half of the limit of 1
    assert overflow.getMessage().startswith("step 1: fp16 gradient overflow at loss scale 16: GradScaler skips")
    assert skipped.levelno == logging.WARNING and "stability.max_consecutive_overflows=1" in skipped.getMessage()
    assert skipped.getMessage().endswith("step skipped (1 in a row)")
    too_many = r"2 non-finite steps in a row exceed stability\.max_consecutive_skips=1"
    with pytest.raises(NonFiniteStepError, match=too_many):
        train_step(state, batch, CTCLoss(), grad_clip=1.0)


def test_an_overflow_fault_rolls_back_under_rollback(tmp_path: Path) -> None:
    state = scaled_state("rollback", tmp_path, min_loss_scale=0.0, max_consecutive_overflows=0)
    rollback = Rollback(every_n_steps=1, lr_factor=0.5, max_rollbacks=3)
    state.callbacks.append(StabilityMonitors(rollback=rollback))
    lr = state.optimizer.param_groups[0]["lr"]
    assert not train_step(state, make_batch([[1, 2], [3, 4]]), CTCLoss(), grad_clip=1.0).applied
    assert len(rollback.history) == 1 and state.optimizer.param_groups[0]["lr"] == lr * 0.5
    assert "stability.max_consecutive_overflows=0" in rollback.history[0].message
    assert state.precision.scaler.get_scale() == 16.0  # the scaler state of the snapshot


def test_an_applied_step_ends_the_overflow_streak(tmp_path: Path) -> None:
    state = scaled_state("raise", tmp_path, min_loss_scale=0.0, max_consecutive_overflows=1)
    batch = make_batch([[1, 2], [3, 4]])
    assert not train_step(state, batch, CTCLoss(), grad_clip=1.0).applied
    state.model.head[0] = nn.Identity()  # the gradient is finite again
    assert train_step(state, batch, CTCLoss(), grad_clip=1.0).applied
    assert state.guard.consecutive_overflows == 0 and state.guard.overflows == 1
    state.model.head[0] = NaNGradient()
    assert not train_step(state, batch, CTCLoss(), grad_clip=1.0).applied  # 1 in a row again: ordinary


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"val_every_n_epochs": 0}, "trainer.val_every_n_epochs must be 1 or more, got 0"),
        ({"log_every_n_steps": 0}, "trainer.log_every_n_steps must be 1 or more, got 0"),
        ({"max_epochs": 0}, "trainer.max_epochs must be 1 or more, got 0"),
        ({"max_steps": -5}, "trainer.max_steps must be 1 or more, got -5"),
        ({"early_stopping_patience": 0}, "trainer.early_stopping_patience must be 1 or more, got 0"),
        ({"checkpoint_every_n_steps": -1}, "trainer.checkpoint_every_n_steps must be 0 (off) or more, got -1"),
        ({"monitor": "cer"}, "trainer.monitor must be one of val/cer, val/wer, val/loss, got 'cer'"),
    ],
)
def test_trainer_settings_the_loop_would_fail_on_after_an_epoch_are_refused_at_once(
    setting: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainerOptions(**setting)  # type: ignore[arg-type]


def test_trainer_settings_that_switch_something_off_are_accepted() -> None:
    opts = TrainerOptions(max_steps=None, early_stopping_patience=None, checkpoint_every_n_steps=0, monitor="val/loss")
    assert (opts.max_steps, opts.early_stopping_patience, opts.monitor) == (None, None, "val/loss")


def test_a_scaled_run_resumed_from_an_unscaled_checkpoint_starts_its_scaler_afresh() -> None:
    """fp32 on CPU, continued in fp16 on CUDA (``trainer.resume_allow=[trainer.precision]``): the checkpoint's
    scaler never ran and saved nothing; the new one starts at its initial scale."""
    saved = make_state().state_dict()
    assert saved["scaler"] == {} and saved["precision"] == "32"
    state = make_state()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # enabled: stands for CUDA's
    state.precision = Precision("16-mixed", torch.device("cpu"), torch.float16, scaler)
    state.load_state_dict(saved)
    assert scaler.is_enabled() and scaler.get_scale() == 1024.0


def test_validation_scores_the_transcripts_so_an_unk_output_is_no_match() -> None:
    """``stability.unknown=unk``: the label of ``é`` is ``<unk>``; a model that outputs ``<unk>`` has not read ``é``."""
    model = CRNN(num_classes=3, height=8, channels=(4,), pools=((2, 2),), rnn_hidden=4)
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 0.0, 100.0]))  # <unk> (id 2) wins every frame: one <unk> out
    batch = make_batch([[2]])
    batch.texts = ["\u00e9"]
    alphabet = Alphabet(["a", UNK])
    metrics, rows = evaluate_loader(
        model, [batch], CTCLoss(), alphabet, resolve_precision("32", torch.device("cpu")), keep_predictions=True
    )
    assert rows == [("line-0", "\u00e9", UNK_TEXT)] and metrics["cer"] == 1.0
