"""Averaged weights: the update rule, what the checkpoint holds, and rollback."""

from __future__ import annotations

import re

import pytest
import torch

from recognizer.engine.ema import WeightAverage
from recognizer.engine.loop import TrainState
from recognizer.engine.precision import resolve_precision
from recognizer.engine.schedulers import constant
from recognizer.models import CRNN
from recognizer.stability.guard import NonFiniteGuard
from recognizer.stability.rollback import Rollback


def tiny_state(decay: float | None = 0.9) -> TrainState:
    torch.manual_seed(0)
    model = CRNN(num_classes=5, height=8, channels=(4,), pools=((2, 2),), rnn_hidden=8, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    precision = resolve_precision("32", torch.device("cpu"))
    state = TrainState(model, optimizer, constant(optimizer, 10), precision, NonFiniteGuard("rollback"))
    if decay is not None:
        state.ema = WeightAverage(model, decay)
    return state


def shift(model: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(value)


def first(model: torch.nn.Module) -> torch.Tensor:
    return next(model.parameters()).detach().clone()


def test_the_average_follows_the_warmed_up_decay_and_copies_integer_buffers() -> None:
    state = tiny_state(decay=0.9)
    ema = state.ema
    assert ema is not None
    start = first(state.model)
    shift(state.model, 1.0)
    state.model.train()(torch.rand(2, 1, 8, 16), torch.tensor([16, 16]))  # BatchNorm counts a batch
    ema.update(state.model)  # update 0: decay min(0.9, 1/10) = 0.1
    assert torch.allclose(first(ema.module), 0.1 * start + 0.9 * (start + 1.0))
    assert ema.current_decay() == pytest.approx(2 / 11)
    for _ in range(100):
        ema.update(state.model)
    assert ema.current_decay() == 0.9
    counts = [b for name, b in ema.module.named_buffers() if name.endswith("num_batches_tracked")]
    assert counts and all(int(c) == 1 for c in counts)  # copied, not averaged
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_bad_decay_is_named() -> None:
    with pytest.raises(ValueError, match=re.escape("trainer.ema_decay must be in (0, 1) or null, got 1.0")):
        WeightAverage(torch.nn.Linear(2, 2), 1.0)


def test_the_checkpoint_saves_the_average_as_model_and_the_trained_weights_for_resuming() -> None:
    state = tiny_state()
    assert state.ema is not None
    shift(state.model, 1.0)
    state.ema.update(state.model)
    ckpt = state.state_dict()
    assert torch.equal(next(iter(ckpt["model"].values())), next(iter(state.ema.module.state_dict().values())))
    assert torch.equal(next(iter(ckpt["train_model"].values())), next(iter(state.model.state_dict().values())))
    assert ckpt["ema"]["updates"] == 1
    resumed = tiny_state()
    resumed.load_state_dict(ckpt)
    assert resumed.ema is not None and resumed.ema.updates == 1
    assert torch.equal(first(resumed.model), first(state.model))
    assert torch.equal(first(resumed.ema.module), first(state.ema.module))
    plain = tiny_state(decay=None)  # without an average: the trained weights are resumed
    plain.load_state_dict(ckpt)
    assert torch.equal(first(plain.model), first(state.model))
    no_average = {k: v for k, v in ckpt.items() if k not in ("train_model", "ema")}
    started = tiny_state()  # an old checkpoint: the average starts from its weights
    started.load_state_dict(no_average)
    assert started.ema is not None and started.ema.updates == 0
    assert torch.equal(first(started.ema.module), first(state.ema.module))


def test_a_rollback_restores_the_average_too() -> None:
    state = tiny_state()
    assert state.ema is not None
    rollback = Rollback(every_n_steps=1, lr_factor=0.5, max_rollbacks=2)
    rollback.take(state)
    good = first(state.ema.module)
    shift(state.model, 5.0)
    state.ema.update(state.model)
    rollback.restore(state, "diverged")
    assert torch.equal(first(state.ema.module), good) and state.ema.updates == 0
