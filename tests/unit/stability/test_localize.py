"""Localisation by replay: the first non-finite module, forward or backward, and the saved batch."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from recognizer.ctc import CTCLoss
from recognizer.data.batching import Batch
from recognizer.stability.localize import NonFiniteInspector, load_nonfinite, localize


class Net(nn.Module):
    """``(B, 1, 1, T)`` → ``(B, T, 3)`` logits through ``first`` → ``middle`` → ``head``."""

    def __init__(self, middle: nn.Module, poison_between: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(1, 4)
        self.middle = middle
        self.head = nn.Linear(4, 3)
        self.poison_between = poison_between
        self.num_classes = 3

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        h = self.first(x.flatten(1).unsqueeze(-1))  # (B, T, 4)
        if self.poison_between:
            h = torch.log(h - 100.0)  # a functional op between modules: NaN
        return self.head(self.middle(h)), lengths


class SqrtRelu(nn.Module):
    """Finite forward, but ``d sqrt / dx`` at 0 is inf, and inf × the mask's 0 is NaN in backward."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sqrt(x * (x > 0))


class LogNegative(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.log(x - 100.0)


def make_batch(n: int = 3, t: int = 6) -> Batch:
    x = torch.linspace(-1, 1, n * t).reshape(n, 1, 1, t)
    targets = torch.tensor([[1, 2]] * n)
    return Batch(x, torch.full((n,), t), targets, torch.full((n,), 2), ["ab"] * n, [f"s{i}" for i in range(n)])


def test_forward_culprit_is_the_first_non_finite_module() -> None:
    found = localize(Net(nn.Sequential(nn.Identity(), LogNegative(), nn.Tanh())), make_batch(), CTCLoss())
    assert (found.stage, found.module, found.module_type, found.inputs_finite) == (
        "forward",
        "middle.1",
        "LogNegative",
        True,
    )
    assert "sqrt/log/pow/division" in found.cause
    assert "module 'middle.1' (LogNegative), inputs finite" in found.summary()


def test_nan_created_between_modules_names_the_enclosing_module() -> None:
    found = localize(Net(nn.Identity(), poison_between=True), make_batch(), CTCLoss())
    assert found.module == "middle" and not found.inputs_finite
    assert "arose in code between modules" in found.cause


def test_backward_culprit_when_the_forward_is_finite() -> None:
    found = localize(Net(SqrtRelu()), make_batch(), CTCLoss())
    assert (found.stage, found.module, found.module_type) == ("backward", "middle", "SqrtRelu")
    assert "finite output gradient into NaN/Inf" in found.cause
    assert "first.weight" in found.bad_parameters


def test_non_finite_input_names_the_samples() -> None:
    batch = make_batch()
    batch.inputs[2, 0, 0, 1] = float("inf")
    found = localize(Net(nn.Identity()), batch, CTCLoss())
    assert found.stage == "input" and found.samples == ["s2"]
    assert "non-finite input data (Inf)" in found.cause


def test_infeasible_sample_without_zero_infinity_is_a_loss_cause() -> None:
    batch = make_batch(t=6)
    batch.input_lengths[1] = 1  # 1 frame for 2 labels
    found = localize(Net(nn.Identity()), batch, CTCLoss(zero_infinity=False))
    assert found.stage == "loss" and found.samples == ["s1"]
    assert "stability.zero_infinity=false" in found.cause


def test_healthy_batch_is_not_reproduced() -> None:
    found = localize(Net(nn.Tanh()), make_batch(), CTCLoss())
    assert found.stage == "not_reproduced"
    assert "stability.detect_anomaly=true" in found.cause


def test_replay_leaves_the_model_untouched() -> None:
    net = Net(nn.Sequential(nn.BatchNorm1d(6), nn.ReLU(inplace=True), SqrtRelu()))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    localize(net, make_batch(), CTCLoss())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    assert net.middle[1].inplace  # only the replica's in-place flags are turned off


def test_inspector_saves_a_loadable_batch_and_state(tmp_path: Path) -> None:
    net = Net(LogNegative())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    inspector = NonFiniteInspector(tmp_path)
    batch = make_batch()
    text = inspector(7, net, optimizer, torch.amp.GradScaler("cpu", enabled=False), batch, CTCLoss())
    path = tmp_path / "nonfinite" / "step_7.pt"
    assert text == "localised by replay: forward — module 'middle' (LogNegative), inputs finite; likely cause: " + (
        inspector.events[0]["cause"] + f"; batch and state saved to {path}"
    )
    state, replay = load_nonfinite(path)  # weights_only=True
    assert state["step"] == 7 and replay.ids == batch.ids and torch.equal(replay.inputs, batch.inputs)
    restored = Net(nn.Identity())
    restored.load_state_dict(state["model"])
    assert inspector.events[0]["module"] == "middle"


def test_inspector_can_skip_save_and_replay(tmp_path: Path) -> None:
    inspector = NonFiniteInspector(tmp_path, save=False, replay=False)
    net = Net(LogNegative())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    assert inspector(1, net, optimizer, torch.amp.GradScaler("cpu", enabled=False), make_batch(), CTCLoss()) == ""
    assert not (tmp_path / "nonfinite").exists()


def test_a_failing_replay_never_hides_the_original_error(tmp_path: Path) -> None:
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
            raise RuntimeError("kaboom")

    inspector = NonFiniteInspector(tmp_path, save=False)
    net = Broken()
    text = inspector(
        1, net, torch.optim.SGD(net.parameters(), lr=0.1), torch.amp.GradScaler("cpu"), make_batch(), CTCLoss()
    )
    assert text == "replay failed: RuntimeError: kaboom"


def test_inspector_saves_at_most_max_files(tmp_path: Path) -> None:
    inspector = NonFiniteInspector(tmp_path, replay=False, max_files=1)
    net = Net(LogNegative())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    inspector(1, net, optimizer, scaler, make_batch(), CTCLoss())
    text = inspector(2, net, optimizer, scaler, make_batch(), CTCLoss())
    assert text == f"not saved: stability.max_nonfinite_files=1 files already in {tmp_path / 'nonfinite'}"
    assert [p.name for p in (tmp_path / "nonfinite").iterdir()] == ["step_1.pt"]


def test_a_failing_save_never_hides_the_original_error(tmp_path: Path) -> None:
    (tmp_path / "nonfinite").write_text("a file where the folder should be")  # mkdir fails as on a full disk
    inspector = NonFiniteInspector(tmp_path, replay=False)
    net = Net(LogNegative())
    text = inspector(
        3,
        net,
        torch.optim.SGD(net.parameters(), lr=0.1),
        torch.amp.GradScaler("cpu", enabled=False),
        make_batch(),
        CTCLoss(),
    )
    assert text.startswith("not saved: FileExistsError: ") and inspector.events == [{"step": 3, "file": None}]
