"""MaskedBatchNorm: statistics over the valid positions only; evaluation and state_dict as nn.BatchNorm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recognizer.models.crnn import width_mask
from recognizer.models.norm import MaskedBatchNorm, masked_batch_norm_from


def padded(samples: list[torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C, H, w)`` samples → ``(B, C, H, width)`` with noise in the padding, and ``(B,)`` widths."""
    x = torch.randn(len(samples), *samples[0].shape[:-1], width) * 100  # the padding must not count
    for i, s in enumerate(samples):
        x[i, ..., : s.size(-1)] = s
    return x, torch.tensor([s.size(-1) for s in samples])


def test_training_statistics_are_those_of_the_valid_columns() -> None:
    torch.manual_seed(0)
    samples = [torch.randn(3, 4, 9) + 2, torch.randn(3, 4, 30)]
    x, widths = padded(samples, 50)
    masked, plain = MaskedBatchNorm(3, momentum=0.3), nn.BatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        masked.weight.uniform_(0.5, 2)
        masked.bias.uniform_(-1, 1)
    plain.load_state_dict(masked.state_dict())
    y = masked(x, width_mask(widths, x.size(-1)))
    # BatchNorm's statistics over (B, H, W) are those of the valid columns laid side by side
    reference = plain(torch.cat(samples, dim=-1).unsqueeze(0))[0]
    torch.testing.assert_close(torch.cat([y[0, ..., :9], y[1, ..., :30]], dim=-1), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(masked.running_mean, plain.running_mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(masked.running_var, plain.running_var, atol=1e-6, rtol=0)
    assert int(masked.num_batches_tracked) == int(plain.num_batches_tracked) == 1


def test_cumulative_average_without_momentum() -> None:
    torch.manual_seed(0)
    masked, plain = MaskedBatchNorm(2, momentum=None), nn.BatchNorm1d(2, momentum=None)
    for width in (5, 17, 8):
        sample = torch.randn(2, width) * width
        x = torch.cat([sample, torch.full((2, 40 - width), 1e4)], dim=-1).unsqueeze(0)  # (1, 2, 40)
        masked(x, (torch.arange(40) < width).view(1, 1, 40))
        plain(sample.unsqueeze(0))
    torch.testing.assert_close(masked.running_mean, plain.running_mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(masked.running_var, plain.running_var, atol=1e-4, rtol=1e-6)


def test_evaluation_is_plain_batchnorm_and_ignores_the_mask() -> None:
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(3)
    plain.running_mean.uniform_(-1, 1)
    plain.running_var.uniform_(0.5, 2)
    masked = masked_batch_norm_from(plain).eval()
    x = torch.randn(2, 3, 4, 10)
    mask = width_mask(torch.tensor([10, 4]), 10)
    assert torch.equal(masked(x, mask), plain.eval()(x))
    assert torch.equal(masked(x), plain(x))


def test_state_dict_keys_are_those_of_batchnorm() -> None:
    plain = nn.BatchNorm2d(5)
    assert list(MaskedBatchNorm(5).state_dict()) == list(plain.state_dict())
    MaskedBatchNorm(5).load_state_dict(plain.state_dict())  # an old checkpoint's BatchNorm loads


def test_a_batch_without_valid_positions_leaves_the_statistics_alone() -> None:
    norm = MaskedBatchNorm(3)
    y = norm(torch.randn(2, 3, 6), torch.zeros(2, 1, 6))
    assert torch.isfinite(y).all()
    assert torch.equal(norm.running_mean, torch.zeros(3)) and torch.equal(norm.running_var, torch.ones(3))


def test_gradients_ignore_the_padding() -> None:
    torch.manual_seed(0)
    norm = MaskedBatchNorm(2)
    x = torch.randn(2, 2, 1, 12, requires_grad=True)
    mask = width_mask(torch.tensor([12, 5]), 12)
    (norm(x, mask) * mask).pow(2).sum().backward()
    assert x.grad is not None and torch.equal(x.grad[1, ..., 5:], torch.zeros(2, 1, 7))


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"MaskedBatchNorm expects \(B, C, \.\.\.\) input, got shape \(4,\)"):
        MaskedBatchNorm(4)(torch.randn(4), torch.ones(4))


def reference_masked_norm(
    x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """The masked BatchNorm written plainly, for autograd to differentiate (statistics included); padded
    outputs zeroed, as the models do with them."""
    dims = [0, *range(2, x.dim())]
    m = mask.expand(x.size(0), 1, *x.shape[2:]).to(x.dtype)
    n = m.sum()
    mean = (x * m).sum(dims, keepdim=True) / n
    var = (((x - mean) ** 2) * m).sum(dims, keepdim=True) / n
    shape = [1, -1, *([1] * (x.dim() - 2))]
    return ((x - mean) / torch.sqrt(var + 1e-5) * weight.view(shape) + bias.view(shape)) * m


@pytest.mark.parametrize("layout", ["channels_last", "contiguous_3d"])
def test_output_and_gradients_match_autograd_through_the_masked_statistics(layout: str) -> None:
    """The closed-form backward against float64 autograd of the plain formula, in the CRNN's layout
    (channels-last 4-D) and the Conformer's (contiguous (B, C, T)); the output keeps the input's layout."""
    torch.manual_seed(0)
    if layout == "channels_last":
        x = torch.randn(3, 4, 5, 20).contiguous(memory_format=torch.channels_last) * 3 + 1
        mask = width_mask(torch.tensor([20, 7, 13]), 20)
    else:
        x = torch.randn(3, 4, 20) * 3 + 1
        mask = (torch.arange(20) < torch.tensor([[20], [7], [13]])).unsqueeze(1)
    x.requires_grad_()
    norm = MaskedBatchNorm(4)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    dy = torch.randn(x.shape) * mask  # callers zero the padded outputs: no gradient comes from them
    y = norm(x, mask)
    y.backward(dy)
    assert y.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)

    x64 = x.detach().double().requires_grad_()
    w64, b64 = (p.detach().double().requires_grad_() for p in (norm.weight, norm.bias))
    y64 = reference_masked_norm(x64, mask, w64, b64)
    y64.backward(dy.double())
    torch.testing.assert_close(y.double() * mask, y64, atol=1e-5, rtol=0)
    for ours, reference in ((x.grad, x64.grad), (norm.weight.grad, w64.grad), (norm.bias.grad, b64.grad)):
        torch.testing.assert_close(ours.double(), reference, atol=1e-5, rtol=1e-5)
