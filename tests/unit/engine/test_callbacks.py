"""The loop's hook protocol (recognizer.engine.callbacks): when fit calls each hook, and a callback's
state through a checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from recognizer.alphabet import Alphabet
from recognizer.ctc import CTCLoss
from recognizer.data.batching import Batch, EpochBatchSampler
from recognizer.engine.callbacks import Callback
from recognizer.engine.loop import TrainerOptions, TrainState, fit, train_step
from recognizer.engine.precision import resolve_precision
from recognizer.engine.schedulers import constant
from recognizer.models import CRNN
from recognizer.stability.guard import NonFiniteGuard


class Recorder(Callback):
    """Writes down every hook call with the step it saw; counts steps in its checkpointed state."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.healthy_steps = 0

    def on_fit_start(self, state: Any) -> None:
        self.calls.append(("fit_start", state.step))

    def on_step_start(self, state: Any) -> None:
        self.calls.append(("step_start", state.step))

    def on_step_end(self, state: Any, applied: bool, loss: float, lr: float) -> None:
        assert applied and loss > 0 and lr == pytest.approx(1e-2)
        self.healthy_steps += 1
        self.calls.append(("step_end", state.step))

    def on_batch_end(self, state: Any) -> None:
        self.calls.append(("batch_end", state.step))

    def on_validation_end(self, state: Any, metrics: Mapping[str, float], improved: bool) -> None:
        assert set(metrics) == {"loss", "cer", "wer", "blank", "empty"}
        self.calls.append(("validation_end", state.step))

    def checkpoint_items(self) -> dict[str, Any]:
        return {"recorder": {"healthy_steps": self.healthy_steps}}

    def load_checkpoint_items(self, ckpt: Mapping[str, Any]) -> None:
        if ckpt.get("recorder") is not None:
            self.healthy_steps = ckpt["recorder"]["healthy_steps"]


class NullLogger:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_config(self, config: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


def tiny_state() -> TrainState:
    torch.manual_seed(0)
    model = CRNN(num_classes=5, height=8, channels=(4,), pools=((2, 2),), rnn_hidden=8, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    precision = resolve_precision("32", torch.device("cpu"))
    return TrainState(model, optimizer, constant(optimizer, 10), precision, NonFiniteGuard("raise"))


def batch(seed: int) -> Batch:
    x = torch.rand(2, 1, 8, 16, generator=torch.Generator().manual_seed(seed))
    return Batch(
        x, torch.full((2,), 16), torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, 2]), ["x", "y"], ["ab", "cd"]
    )


def run_fit(state: TrainState, tmp_path: Path, epochs: int) -> None:
    batches = [batch(1), batch(2)]
    sampler = EpochBatchSampler(range(2), batch_size=1, shuffle=False)  # two batches per epoch, as above
    opts = TrainerOptions(max_epochs=epochs, progress_bar=False)
    alphabet = Alphabet("abcd")
    describe = {"config": {}, "alphabet": alphabet.symbols}  # what a checkpoint must say of itself
    fit(state, sampler, batches, [batch(3)], CTCLoss(), alphabet, opts, tmp_path, NullLogger(), describe)


def test_fit_calls_each_hook_at_its_moment_in_order(tmp_path: Path) -> None:
    state = tiny_state()
    recorder = Recorder()
    state.callbacks.append(recorder)
    run_fit(state, tmp_path, epochs=2)
    one_epoch = [("step_start", 0), ("step_end", 1), ("batch_end", 1), ("step_start", 1), ("step_end", 2)]
    assert recorder.calls == [
        ("fit_start", 0),
        *one_epoch,
        ("batch_end", 2),
        ("validation_end", 2),
        *[(hook, step + 2) for hook, step in one_epoch],
        ("batch_end", 4),
        ("validation_end", 4),
    ]


def test_a_callbacks_state_goes_through_the_checkpoint(tmp_path: Path) -> None:
    state = tiny_state()
    state.callbacks.append(Recorder())
    run_fit(state, tmp_path, epochs=1)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)  # the loop's entries, as written
    assert ckpt["recorder"] == {"healthy_steps": 2}
    resumed, fresh = tiny_state(), Recorder()
    resumed.callbacks.append(fresh)
    resumed.load_state_dict(ckpt)
    assert fresh.healthy_steps == 2
    older = {k: v for k, v in ckpt.items() if k != "recorder"}  # a checkpoint written without this callback
    again = Recorder()
    resumed.callbacks = [again]
    resumed.load_state_dict(older)
    assert again.healthy_steps == 0


def test_the_rollback_policy_without_a_restoring_callback_is_named() -> None:
    state = tiny_state()
    state.guard = NonFiniteGuard("rollback")
    poisoned = batch(1)
    poisoned.inputs[0, 0, 0, 0] = float("nan")
    state.callbacks.append(Recorder())  # restores nothing
    with pytest.raises(ValueError, match=r"rollback needs a callback that restores a good state"):
        train_step(state, poisoned, CTCLoss(), grad_clip=1.0)
