"""CTC decoding. Blank is id 0 (see :mod:`recognizer.ctc`)."""

from __future__ import annotations

import torch
from torch import Tensor

from recognizer.ctc import BLANK


def greedy_decode(logits: Tensor, lengths: Tensor) -> list[list[int]]:
    """Best-path decoding: per-frame argmax, merge repeats, drop blanks.

    Args:
        logits: ``(B, T, C)`` scores (logits or log-probs: argmax is the same).
        lengths: ``(B,)`` valid frames per sample.

    Returns:
        Label ids (``1..C-1``) per sample.
    """
    best = logits.argmax(-1).cpu()  # (B, T)
    lengths = lengths.cpu()
    keep = torch.ones_like(best, dtype=torch.bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != BLANK
    keep &= torch.arange(best.size(1)).unsqueeze(0) < lengths.unsqueeze(1)
    return [row[mask].tolist() for row, mask in zip(best, keep)]
