"""Tests for recognizer.ctc.greedy_decode on hand-made logits."""

import pytest
import torch

from recognizer.ctc import greedy_decode

C = 5


def logits_for(*frame_rows, num_classes=C, scale=5.0):
    """(B, T, C) logits whose per-frame argmax is the given class ids (rows padded with blank)."""
    T = max(len(r) for r in frame_rows)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(len(frame_rows), T, num_classes, generator=g)  # noise in [0, 1)
    for b, row in enumerate(frame_rows):
        for t in range(T):
            x[b, t, row[t] if t < len(row) else 0] += scale
    return x


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        ([1, 1, 0, 2, 2, 2], [1, 2]),  # repeats merged, blank removed
        ([1, 0, 1], [1, 1]),  # a blank between equal labels keeps both
        ([1, 1, 1], [1]),
        ([0, 0, 0], []),
        ([0, 3, 0, 0, 4, 4, 0], [3, 4]),
        ([2, 3, 2, 3], [2, 3, 2, 3]),
        ([4], [4]),
    ],
)
def test_greedy_decode_single(frames, expected):
    out = greedy_decode(logits_for(frames), torch.tensor([len(frames)]))
    assert out == [expected]


def test_frames_beyond_length_are_ignored():
    x = logits_for([1, 2, 3, 3], [2, 2, 2, 4], [3, 0, 1, 1])
    out = greedy_decode(x, torch.tensor([2, 1, 0]))
    assert out == [[1, 2], [2], []]


def test_batch_with_different_lengths():
    x = logits_for([1, 0, 1, 2], [3, 3, 0, 0])
    assert greedy_decode(x, torch.tensor([4, 4])) == [[1, 1, 2], [3]]
    assert greedy_decode(x, torch.tensor([3, 4])) == [[1, 1], [3]]


def test_log_probs_decode_like_logits():
    x = logits_for([1, 1, 0, 4, 0, 4], [2, 0, 3, 3, 1, 0])
    lengths = torch.tensor([6, 5])
    assert greedy_decode(x.log_softmax(-1), lengths) == greedy_decode(x, lengths)


def test_returns_python_ints():
    out = greedy_decode(logits_for([2, 3]), torch.tensor([2]))
    assert all(type(i) is int for i in out[0])
