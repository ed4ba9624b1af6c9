"""The NaN zoo: every known cause of a NaN/inf CTC loss, reproduced small, caught and named.

Each case asserts the cause named in the error (or verdict) and that no non-finite weight was
ever stored: the model after the failure and the state saved in ``nonfinite/step_N.pt`` are finite.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from recognizer.alphabet import Alphabet
from recognizer.ctc import CTCLoss, FeasibilityError, LabelError
from recognizer.data.batching import Batch
from recognizer.doctor import head_verdicts
from recognizer.engine.loop import TrainState, train_step
from recognizer.engine.precision import Precision, resolve_precision
from recognizer.engine.schedulers import constant
from recognizer.models import CRNN
from recognizer.stability.audit import AuditError, audit_split
from recognizer.stability.guard import NonFiniteGuard, NonFiniteStepError
from recognizer.stability.localize import NonFiniteInspector, load_nonfinite
from recognizer.stability.rollback import finite_weights


class NegativeSqrt(nn.Module):
    """A buggy custom layer: ``sqrt(x - 10)`` is NaN for every input below 10."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sqrt(x - 10.0)


class Scale(nn.Module):
    """Multiplies activations by a constant (a stand-in for an un-normalised layer)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


def tiny_model(num_classes: int = 5) -> CRNN:
    torch.manual_seed(0)
    return CRNN(num_classes=num_classes, height=8, channels=(4,), pools=((2, 2),), rnn_hidden=8, dropout=0.0)


def make_state(model: nn.Module, run_dir: Path | None, lr: float = 1e-2, precision: Precision | None = None):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    precision = precision or resolve_precision("32", torch.device("cpu"))
    state = TrainState(model, optimizer, constant(optimizer, 10), precision, NonFiniteGuard("raise"))
    if run_dir is not None:
        state.inspector = NonFiniteInspector(run_dir)
    return state


def make_batch(targets: list[list[int]], width: int = 16, inputs: Tensor | None = None) -> Batch:
    lengths = torch.tensor([len(t) for t in targets])
    padded = torch.zeros(len(targets), max(1, int(lengths.max())), dtype=torch.long)
    for i, t in enumerate(targets):
        padded[i, : len(t)] = torch.tensor(t)
    n = len(targets)
    x = torch.rand(n, 1, 8, width, generator=torch.Generator().manual_seed(1)) if inputs is None else inputs
    return Batch(x, torch.full((n,), width), padded, lengths, ["x"] * n, [f"line-{i}" for i in range(n)])


def assert_nothing_non_finite_stored(state: TrainState, run_dir: Path | None = None) -> None:
    assert finite_weights(state.model)
    if run_dir is not None:
        for path in (run_dir / "nonfinite").glob("step_*.pt"):
            saved, _ = load_nonfinite(path)
            assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


# ----------------------------------------------------------------------------- labels and lengths


def test_head_one_class_short() -> None:
    alphabet = Alphabet.from_texts(["abcd"])  # 4 symbols → 5 classes; the model has 4
    model = tiny_model(num_classes=4)
    dataset = type("D", (), {"ids": ["l-0", "l-1"], "texts": ["ab", "dd"]})()
    verdicts = {v.code: v for v in head_verdicts(model, alphabet, dataset)}
    assert verdicts["head_size"].severity == "blocking"
    assert "the head is off by -1" in verdicts["head_size"].evidence
    assert "class count off" in verdicts["head_size"].cause
    assert verdicts["ids_out_of_range"].evidence.endswith("l-1 (id 4)")
    state = make_state(model, None)
    with pytest.raises(LabelError, match=r"outside 1\.\.3 .* the head size and the alphabet disagree"):
        train_step(state, make_batch([[1, 2], [4, 4]]), CTCLoss(), grad_clip=1.0)
    assert state.step == 0 and finite_weights(model)


def test_label_id_out_of_range() -> None:
    state = make_state(tiny_model(), None)
    with pytest.raises(LabelError, match=r"label ids \[7\] outside 1\.\.4 in samples \['line-1'\]"):
        train_step(state, make_batch([[1, 2], [3, 7]]), CTCLoss(), grad_clip=1.0)
    assert_nothing_non_finite_stored(state)


def test_negative_label_id() -> None:
    state = make_state(tiny_model(), None)
    with pytest.raises(LabelError, match=r"label ids \[-1\] outside 1\.\.4 in samples \['line-0'\]"):
        train_step(state, make_batch([[-1, 2], [3, 4]]), CTCLoss(), grad_clip=1.0)
    assert_nothing_non_finite_stored(state)


def test_label_longer_than_the_output() -> None:
    state = make_state(tiny_model(), None)  # width 8 → 4 frames; 6 labels
    with pytest.raises(FeasibilityError, match=r"line-0 \(frames=4, needs 6\)"):
        train_step(state, make_batch([[1, 2, 3, 4, 1, 2]], width=8), CTCLoss(), grad_clip=1.0)
    assert_nothing_non_finite_stored(state)


def test_repeats_make_a_sample_infeasible() -> None:
    state = make_state(tiny_model(), None)  # 4 frames hold 4 labels, but "1 1 2 2" needs 6
    with pytest.raises(FeasibilityError, match=r"label length \+ adjacent repeats.*line-0 \(frames=4, needs 6\)"):
        train_step(state, make_batch([[1, 1, 2, 2]], width=8), CTCLoss(), grad_clip=1.0)
    assert_nothing_non_finite_stored(state)


def test_empty_label() -> None:
    alphabet = Alphabet.from_texts(["ab"])
    with pytest.raises(AuditError, match=r"empty: 1 — e\.g\. blank-line: empty transcript"):
        audit_split("train", ["ok", "blank-line"], ["ab", ""], [40, 40], alphabet, lambda w: w // 4)


# ----------------------------------------------------------------------------- non-finite at run time


@pytest.mark.parametrize(("value", "kind"), [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_non_finite_input(value: float, kind: str, tmp_path: Path) -> None:
    state = make_state(tiny_model(), tmp_path)
    batch = make_batch([[1, 2], [3, 4], [2]])
    batch.inputs[1, 0, 3, 5] = value
    with pytest.raises(NonFiniteStepError, match=rf"non-finite input data \({kind}\).*samples \['line-1'\]"):
        train_step(state, batch, CTCLoss(), grad_clip=1.0)
    assert (tmp_path / "nonfinite" / "step_1.pt").is_file()
    assert_nothing_non_finite_stored(state, tmp_path)


def test_learning_rate_high_enough_to_diverge(tmp_path: Path) -> None:
    # Past ~1e11 the trajectory is chaotic (a last-bit change in a gradient decides whether the run
    # stalls at a saturated, zero-gradient state or overflows); 1e10 overflows at step 2 either way.
    state = make_state(tiny_model(), tmp_path, lr=1e10)
    batch = make_batch([[1, 2], [3, 4]])
    with pytest.raises(NonFiniteStepError, match="the learning rate is too high for the gradient scale"):
        for _ in range(5):
            train_step(state, batch, CTCLoss(), grad_clip=0.0)
    assert state.step >= 2  # the first steps were healthy: divergence, not a data fault
    assert_nothing_non_finite_stored(state, tmp_path)


def test_custom_layer_producing_nan_is_localised(tmp_path: Path) -> None:
    model = tiny_model()
    model.head = nn.Sequential(NegativeSqrt(), model.head)
    state = make_state(model, tmp_path)
    with pytest.raises(
        NonFiniteStepError,
        match=r"forward — module 'head\.0' \(NegativeSqrt\), inputs finite; likely cause: .*sqrt/log",
    ):
        train_step(state, make_batch([[1, 2], [3, 4]]), CTCLoss(), grad_clip=1.0)
    assert_nothing_non_finite_stored(state, tmp_path)


def test_fp16_overflow_under_cpu_autocast(tmp_path: Path) -> None:
    model = tiny_model()
    model.head = nn.Sequential(Scale(1e6), model.head)  # fp32 activations of ~1e6 enter an fp16 matmul
    fp16 = Precision("16-mixed", torch.device("cpu"), torch.float16, torch.amp.GradScaler("cpu"))
    state = make_state(model, tmp_path, precision=fp16)
    with pytest.raises(
        NonFiniteStepError, match=r"module 'head\.1' \(Linear\), inputs finite; likely cause: fp16 overflow"
    ):
        train_step(state, make_batch([[1, 2], [3, 4]]), CTCLoss(), grad_clip=1.0)
    assert_nothing_non_finite_stored(state, tmp_path)
