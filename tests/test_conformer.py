"""Conformer-CTC: exact output lengths, padding invariance, the CRNN on spectrograms."""

from __future__ import annotations

import pytest
import torch

from recognizer.models import CRNN, ConformerCTC


def small_conformer(**kwargs) -> ConformerCTC:
    torch.manual_seed(0)
    args = {"d_model": 16, "num_layers": 2, "num_heads": 2, "ffn_dim": 32, "kernel_size": 7, "subsampling_channels": 4}
    return ConformerCTC(num_classes=12, height=20, **(args | kwargs)).eval()


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_output_lengths_equal_the_real_output_length(factor: int) -> None:
    model = small_conformer(subsampling=factor, num_layers=1)
    for t in [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 127, 200]:
        logits, lengths = model(torch.randn(1, 1, 20, t), torch.tensor([t]))
        expected = int(model.output_lengths(torch.tensor([t]))[0])
        assert logits.shape == (1, expected, 12) and int(lengths[0]) == expected, t
        assert expected == -(-t // factor)  # ceil(T / factor) for kernel 3, stride 2, padding 1


def test_a_sample_alone_equals_the_sample_in_a_padded_batch() -> None:
    model = small_conformer()
    lengths = torch.tensor([57, 23, 40, 9])
    x = torch.randn(4, 1, 20, 57)  # noise in the padding too: the model must mask it
    logits, out = model(x, lengths)
    for i, t in enumerate(lengths.tolist()):
        alone, n = model(x[i : i + 1, ..., :t], lengths[i : i + 1])
        assert int(n[0]) == int(out[i])
        torch.testing.assert_close(alone[0], logits[i, : int(n[0])], atol=1e-5, rtol=0)


def test_conv_first_layers_are_padding_invariant_too() -> None:
    model = small_conformer()
    for layer in model.encoder.conformer_layers:
        layer.convolution_first = True
    x, lengths = torch.randn(2, 1, 20, 31), torch.tensor([31, 13])
    logits, _ = model(x, lengths)
    alone, n = model(x[1:, ..., :13], lengths[1:])
    torch.testing.assert_close(alone[0], logits[1, : int(n[0])], atol=1e-5, rtol=0)


def test_gradients_reach_every_parameter() -> None:
    model = small_conformer().train()
    logits, _ = model(torch.randn(2, 1, 20, 30), torch.tensor([30, 22]))
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(("kwargs", "message"), [({"subsampling": 3}, "power of two"), ({"num_heads": 5}, "divisible")])
def test_bad_sizes_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_conformer(**kwargs)


def test_crnn_takes_spectrograms_with_time_as_width() -> None:
    torch.manual_seed(0)
    model = CRNN(num_classes=12, height=80, channels=(8, 8, 8), rnn_hidden=16).eval()
    lengths = torch.tensor([90, 41])
    logits, out = model(torch.randn(2, 1, 80, 90), lengths)
    assert out.tolist() == model.output_lengths(lengths).tolist() == [22, 10]
    assert logits.shape == (2, 22, 12)
