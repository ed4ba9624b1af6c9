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


def test_training_output_and_running_statistics_do_not_depend_on_padding() -> None:
    """The conv module's BatchNorm takes its statistics from the valid frames only."""
    reference = small_conformer(dropout=0.0).state_dict()
    model = small_conformer(dropout=0.0).train()
    torch.manual_seed(1)
    narrow, wide = torch.randn(1, 20, 23), torch.randn(1, 20, 90)

    def forward(samples: list[torch.Tensor], frames: int) -> tuple[torch.Tensor, dict]:
        model.load_state_dict(reference)  # fresh running statistics
        x = torch.randn(len(samples), 1, 20, frames)  # noise in the padding too
        for i, s in enumerate(samples):
            x[i, ..., : s.size(-1)] = s
        logits, _ = model(x, torch.tensor([s.size(-1) for s in samples]))
        return logits.detach(), {k: v.clone() for k, v in model.state_dict().items() if "running" in k}

    n = int(model.output_lengths(torch.tensor([23])))
    alone, stats_alone = forward([narrow], 23)
    padded, stats_padded = forward([narrow], 90)
    torch.testing.assert_close(padded[0, :n], alone[0, :n], atol=1e-5, rtol=0)
    beside, stats_beside = forward([narrow, wide], 90)
    bucketed, stats_bucketed = forward([narrow, wide], 200)
    m = int(model.output_lengths(torch.tensor([90])))
    torch.testing.assert_close(bucketed[0, :n], beside[0, :n], atol=1e-5, rtol=0)
    torch.testing.assert_close(bucketed[1, :m], beside[1, :m], atol=1e-5, rtol=0)
    assert stats_alone  # the conv modules' BatchNorm buffers
    for k in stats_alone:
        torch.testing.assert_close(stats_padded[k], stats_alone[k], atol=1e-6, rtol=0)
        torch.testing.assert_close(stats_bucketed[k], stats_beside[k], atol=1e-6, rtol=0)
