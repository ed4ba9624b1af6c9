"""Tests for recognizer.ctc: the loss wrapper, the length bounds and the contract checks."""

import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F

from recognizer.ctc import (
    BLANK,
    CTCLoss,
    FeasibilityError,
    LabelError,
    adjacent_repeats,
    check_feasible,
    check_targets,
    log_probs_tbc,
    min_output_length,
    min_output_lengths,
    num_classes_for,
)


def assert_close(actual, expected, rtol=1.3e-6, atol=1e-5):
    """Shape, dtype and value check (torch.testing.assert_close costs ~1 s on its first call)."""
    expected = torch.as_tensor(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual, expected)


def make_batch(dtype=torch.float32, seed=0):
    """Random (B, T, C) logits and a padded batch of targets with explicit lengths."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 12, 6, generator=g).to(dtype)
    targets = torch.tensor([[1, 2, 2, 3], [4, 5, 0, 0], [3, 0, 0, 0]])
    target_lengths = torch.tensor([4, 2, 1])
    output_lengths = torch.tensor([12, 9, 5])
    return logits, output_lengths, targets, target_lengths


def reference_per_sample(logits, output_lengths, targets, target_lengths, zero_infinity=False):
    return F.ctc_loss(
        logits.float().log_softmax(-1).transpose(0, 1),
        targets,
        output_lengths,
        target_lengths,
        blank=0,
        reduction="none",
        zero_infinity=zero_infinity,
    )


def brute_force_nll(log_probs, target):
    """-log p(target | x) by summing over every path of a (T, C) log-prob matrix."""
    T, C = log_probs.shape
    total = -math.inf
    for path in itertools.product(range(C), repeat=T):
        collapsed = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
        if [c for c in collapsed if c != 0] == list(target):
            score = sum(float(log_probs[t, c]) for t, c in enumerate(path))
            total = max(total, score) + math.log1p(math.exp(-abs(total - score)))
    return -total


def test_blank_is_zero_and_num_classes_adds_blank():
    assert BLANK == 0
    assert num_classes_for(5) == 6
    assert num_classes_for(0) == 1


def test_invalid_reduction_is_rejected():
    with pytest.raises(ValueError, match="reduction"):
        CTCLoss(reduction="batchmean")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_matches_torch_ctc_loss(reduction, dtype):
    logits, out_len, targets, tgt_len = make_batch(dtype)
    out = CTCLoss(zero_infinity=False, reduction=reduction)(logits, out_len, targets, tgt_len)

    # bf16 logits must be up-cast before log_softmax: the reference sees logits.float().
    ref = reference_per_sample(logits, out_len, targets, tgt_len)
    assert out.per_sample.dtype == torch.float32
    assert out.loss.dtype == torch.float32
    assert out.per_sample.shape == (3,)
    assert_close(out.per_sample, ref)

    if reduction == "mean":
        expected = (ref / tgt_len.clamp(min=1).float()).mean()
        # torch's own 'mean' reduction has the same definition
        torch_mean = F.ctc_loss(
            logits.float().log_softmax(-1).transpose(0, 1),
            targets,
            out_len,
            tgt_len,
            blank=0,
            reduction="mean",
        )
        assert_close(out.loss, torch_mean)
    else:
        expected = ref.mean()
    assert_close(out.loss, expected)


def test_bf16_loss_is_not_computed_in_bf16():
    logits, out_len, targets, tgt_len = make_batch(torch.bfloat16)
    out = CTCLoss(zero_infinity=False, reduction="sum")(logits, out_len, targets, tgt_len)
    ref = reference_per_sample(logits, out_len, targets, tgt_len)
    # fp32 computation reproduces the fp32 reference to float32 precision, far tighter than bf16's
    # ~3 significant digits would allow
    assert torch.allclose(out.per_sample, ref, rtol=1e-5, atol=1e-5)


def test_per_sample_matches_brute_force_path_sum():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 3, generator=g)
    targets = torch.tensor([[1, 2], [1, 1]])
    tgt_len = torch.tensor([2, 2])
    out_len = torch.tensor([5, 4])
    out = CTCLoss(zero_infinity=False)(logits, out_len, targets, tgt_len)
    lp = logits.double().log_softmax(-1)
    expected = [brute_force_nll(lp[0, :5], [1, 2]), brute_force_nll(lp[1, :4], [1, 1])]
    assert_close(out.per_sample.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradients_flow(reduction, dtype):
    logits, out_len, targets, tgt_len = make_batch(dtype)
    logits.requires_grad_(True)
    out = CTCLoss(zero_infinity=False, reduction=reduction)(logits, out_len, targets, tgt_len)
    out.loss.backward()
    assert logits.grad is not None
    assert logits.grad.dtype == dtype
    assert torch.isfinite(logits.grad.float()).all()
    assert logits.grad.abs().sum() > 0
    # frames beyond a sample's output length get no gradient
    assert torch.all(logits.grad[1, 9:] == 0)
    assert torch.all(logits.grad[2, 5:] == 0)
    assert not out.per_sample.requires_grad


def test_gradients_match_reference():
    logits, out_len, targets, tgt_len = make_batch()
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    CTCLoss(zero_infinity=False, reduction="mean")(a, out_len, targets, tgt_len).loss.backward()
    ref = reference_per_sample(b, out_len, targets, tgt_len)
    (ref / tgt_len.float()).mean().backward()
    assert_close(a.grad, b.grad)


def test_empty_target_mean_is_finite():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 4, generator=g)
    targets = torch.tensor([[0, 0], [1, 2]])
    tgt_len = torch.tensor([0, 2])
    out_len = torch.tensor([6, 6])
    out = CTCLoss(zero_infinity=False, reduction="mean")(logits, out_len, targets, tgt_len)
    assert torch.isfinite(out.loss)
    # the only path for an empty label is all blanks
    blank_nll = -logits[0].log_softmax(-1)[:, BLANK].sum()
    assert_close(out.per_sample[0], blank_nll)
    assert_close(out.loss, (out.per_sample[0] / 1 + out.per_sample[1] / 2) / 2)


def test_zero_infinity():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 4, generator=g)
    # sample 0: label [1, 1] needs 3 frames, it has 2; sample 1 is feasible
    targets = torch.tensor([[1, 1], [2, 3]])
    tgt_len = torch.tensor([2, 2])
    out_len = torch.tensor([2, 6])

    x = logits.clone().requires_grad_(True)
    out = CTCLoss(zero_infinity=True)(x, out_len, targets, tgt_len)
    assert out.per_sample[0] == 0
    assert torch.isfinite(out.per_sample[1]) and out.per_sample[1] > 0
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.all(x.grad[0] == 0)
    assert torch.isfinite(x.grad).all()

    out = CTCLoss(zero_infinity=False)(logits, out_len, targets, tgt_len)
    assert math.isinf(float(out.per_sample[0]))
    assert math.isinf(float(out.loss))


@pytest.mark.parametrize(
    ("target", "repeats", "bound"),
    [
        ([1, 1, 2], 1, 4),
        ([1, 2, 3], 0, 3),
        ([3, 3, 3], 2, 5),
        ([], 0, 0),
        ([4], 0, 1),
        ([1, 2, 1], 0, 3),
        ([2, 2, 1, 1], 2, 6),
    ],
)
def test_min_output_length(target, repeats, bound):
    t = torch.tensor(target, dtype=torch.long)
    assert adjacent_repeats(t) == repeats
    assert min_output_length(t) == bound


def test_min_output_lengths_padded_batch():
    targets = torch.tensor(
        [
            [1, 1, 2],
            [1, 2, 3],
            [3, 3, 3],
            [0, 0, 0],  # empty
            [2, 0, 0],  # padding 0, 0 must not count as a repeat
            [2, 2, 0],  # garbage beyond the length must not count either
            [1, 2, 2],
        ]
    )
    lengths = torch.tensor([3, 3, 3, 0, 1, 1, 2])
    got = min_output_lengths(targets, lengths)
    assert got.dtype == torch.int64
    assert got.tolist() == [4, 3, 5, 0, 1, 1, 2]


def test_min_output_lengths_single_column():
    targets = torch.tensor([[5], [0]])
    lengths = torch.tensor([1, 0], dtype=torch.int32)
    got = min_output_lengths(targets, lengths)
    assert got.dtype == torch.int64
    assert got.tolist() == [1, 0]


def test_min_output_lengths_agrees_with_scalar_version():
    g = torch.Generator().manual_seed(4)
    targets = torch.randint(1, 3, (32, 7), generator=g)  # few classes → many repeats
    lengths = torch.randint(0, 8, (32,), generator=g)
    expected = [min_output_length(t[:n]) for t, n in zip(targets, lengths.tolist(), strict=True)]
    assert min_output_lengths(targets, lengths).tolist() == expected


def test_feasibility_bound_agrees_with_torch():
    g = torch.Generator().manual_seed(5)
    target = torch.tensor([[1, 1, 2, 2, 3]])  # L=5, 2 repeats → 7 frames
    tgt_len = torch.tensor([5])
    assert int(min_output_lengths(target, tgt_len)[0]) == 7
    logits = torch.randn(1, 7, 4, generator=g)
    ctc = CTCLoss(zero_infinity=False)

    exact = ctc(logits, torch.tensor([7]), target, tgt_len).per_sample[0]
    assert torch.isfinite(exact)
    check_feasible(torch.tensor([7]), target, tgt_len, ["s0"])

    short = ctc(logits, torch.tensor([6]), target, tgt_len).per_sample[0]
    assert math.isinf(float(short))
    with pytest.raises(FeasibilityError, match=re.escape("s0 (frames=6, needs 7)")):
        check_feasible(torch.tensor([6]), target, tgt_len, ["s0"])


def test_check_feasible_names_only_offenders():
    targets = torch.tensor([[1, 2, 0], [3, 3, 0], [1, 1, 1]])
    tgt_len = torch.tensor([2, 2, 3])
    out_len = torch.tensor([2, 2, 10])  # middle sample needs 3
    with pytest.raises(FeasibilityError) as e:
        check_feasible(out_len, targets, tgt_len, ["a", "b", "c"])
    msg = str(e.value)
    assert "b (frames=2, needs 3)" in msg
    assert "a (" not in msg and "c (" not in msg
    # without ids the offender is named by its batch index
    with pytest.raises(FeasibilityError, match=re.escape("#1 (frames=2, needs 3)")):
        check_feasible(out_len, targets, tgt_len)
    check_feasible(torch.tensor([2, 3, 5]), targets, tgt_len)


@pytest.mark.parametrize(
    ("row", "bad_value"),
    [([1, 5, 2], 5), ([1, 0, 2], 0), ([1, -1, 2], -1)],
    ids=["id_equals_num_classes", "blank_inside_label", "negative_id"],
)
def test_check_targets_rejects_bad_ids(row, bad_value):
    targets = torch.tensor([[1, 2, 3], row])
    lengths = torch.tensor([3, 3])
    with pytest.raises(LabelError) as e:
        check_targets(targets, lengths, num_classes=5, ids=["good", "bad-sample"])
    msg = str(e.value)
    assert "bad-sample" in msg
    assert "good" not in msg
    assert str(bad_value) in msg


def test_check_targets_ignores_padding():
    targets = torch.tensor([[1, 2, 0, 0], [4, 99, -3, 0], [0, 7, 7, 7]])
    lengths = torch.tensor([2, 1, 0])
    check_targets(targets, lengths, num_classes=5, ids=["a", "b", "c"])


def test_check_targets_accepts_highest_id():
    check_targets(torch.tensor([[1, 4]]), torch.tensor([2]), num_classes=5)


def test_check_targets_negative_length():
    with pytest.raises(LabelError, match="negative"):
        check_targets(torch.tensor([[1, 2]]), torch.tensor([-1]), num_classes=5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_log_probs_tbc_layout_and_dtype(dtype):
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 7, 5, generator=g).to(dtype)
    lp = log_probs_tbc(logits)
    assert lp.shape == (7, 2, 5)
    assert lp.dtype == torch.float32
    assert_close(lp.exp().sum(-1), torch.ones(7, 2))
    for b in range(2):
        for t in range(7):
            assert_close(lp[t, b], logits[b, t].float().log_softmax(-1))
