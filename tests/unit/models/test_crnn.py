"""CRNN: exact output lengths, padding invariance, configuration errors."""

from __future__ import annotations

import pytest
import torch

from recognizer.models import CRNN
from recognizer.models.crnn import reverse_padded


def small_crnn(**kw) -> CRNN:
    torch.manual_seed(0)
    args = dict(num_classes=11, height=16, channels=(4, 8), pools=((2, 2), (2, 2)), rnn_hidden=8, rnn_layers=2)
    return CRNN(**(args | kw)).eval()


@pytest.mark.parametrize("pools", [((2, 2), (2, 2)), ((2, 2), (2, 1)), ((2, 3), (2, 1)), ((1, 1), (4, 2))])
def test_output_lengths_match_real_output(pools) -> None:
    model = small_crnn(pools=pools)
    for width in range(1, 40):
        logits, lengths = model(torch.rand(1, 1, 16, width), torch.tensor([width]))
        assert int(model.output_lengths(torch.tensor([width]))) == int(lengths)
        if width >= model.min_width:
            assert int(lengths) == logits.shape[1]  # a lone sample's real number of frames
        else:
            assert int(lengths) == 0  # too narrow to emit anything


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_padding_invariance(rnn_type: str) -> None:
    model = small_crnn(rnn_type=rnn_type)
    widths = [37, 12, 25, 5]
    samples = [torch.rand(1, 16, w) for w in widths]
    batch = torch.zeros(len(widths), 1, 16, max(widths))
    for i, s in enumerate(samples):
        batch[i, ..., : s.shape[-1]] = s
    with torch.no_grad():
        logits, lengths = model(batch, torch.tensor(widths))
        for i, s in enumerate(samples):
            alone, n = model(s.unsqueeze(0), torch.tensor([widths[i]]))
            assert int(n) == int(lengths[i])
            torch.testing.assert_close(logits[i, : int(n)], alone[0, : int(n)], atol=1e-5, rtol=0)


def test_reverse_padded_reverses_within_length() -> None:
    x = torch.arange(1.0, 7.0).view(1, 6, 1).repeat(2, 1, 1)
    out = reverse_padded(x, torch.tensor([6, 3]))
    assert out[0, :, 0].tolist() == [6, 5, 4, 3, 2, 1]
    assert out[1, :, 0].tolist() == [3, 2, 1, 0, 0, 0]


def test_shapes_and_classes() -> None:
    model = small_crnn(num_classes=7)
    logits, lengths = model(torch.rand(3, 1, 16, 20), torch.tensor([20, 16, 8]))
    assert logits.shape == (3, 5, 7)
    assert lengths.tolist() == [5, 4, 2]


def test_height_must_be_divisible_by_pooling() -> None:
    with pytest.raises(ValueError, match="height 18 is not divisible by the product of pooling heights 4"):
        small_crnn(height=18)


def test_bad_rnn_type() -> None:
    with pytest.raises(ValueError, match="rnn_type must be 'lstm' or 'gru'"):
        small_crnn(rnn_type="transformer")


def padded_batch(samples: list[torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, H, w)`` samples → a zero-padded ``(B, 1, H, width)`` batch and ``(B,)`` widths."""
    batch = torch.zeros(len(samples), *samples[0].shape[:-1], width)
    for i, s in enumerate(samples):
        batch[i, ..., : s.size(-1)] = s
    return batch, torch.tensor([s.size(-1) for s in samples])


def train_forward(model: CRNN, samples: list[torch.Tensor], width: int) -> tuple[torch.Tensor, dict]:
    """One training-mode forward from fresh running statistics: logits and the BatchNorm buffers after it."""
    model.load_state_dict(small_crnn(dropout=0.0).state_dict())
    logits, _ = model.train()(*padded_batch(samples, width))
    return logits.detach(), {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def test_training_output_and_running_statistics_do_not_depend_on_padding() -> None:
    """BatchNorm statistics come from the valid columns: neither the batch's width nor bucketing matters."""
    model = small_crnn(dropout=0.0)
    torch.manual_seed(1)
    narrow, wide = torch.rand(1, 16, 12), torch.rand(1, 16, 96)
    n = int(model.output_lengths(torch.tensor([12])))
    alone, stats_alone = train_forward(model, [narrow], 12)
    padded, stats_padded = train_forward(model, [narrow], 96)  # as wide as a much wider neighbour
    torch.testing.assert_close(padded[0, :n], alone[0, :n], atol=1e-5, rtol=0)
    for k in stats_alone:
        torch.testing.assert_close(stats_padded[k], stats_alone[k], atol=1e-6, rtol=0)
    beside, stats_beside = train_forward(model, [narrow, wide], 96)
    bucketed, stats_bucketed = train_forward(model, [narrow, wide], 160)  # the same pair, padded further
    torch.testing.assert_close(bucketed[0, :n], beside[0, :n], atol=1e-5, rtol=0)
    torch.testing.assert_close(bucketed[1, :24], beside[1, :24], atol=1e-5, rtol=0)
    for k in stats_beside:
        torch.testing.assert_close(stats_bucketed[k], stats_beside[k], atol=1e-6, rtol=0)
