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
