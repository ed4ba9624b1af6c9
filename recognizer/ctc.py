"""The CTC contract: the one place that knows the blank id, the log-prob layout and the length bounds.

Everything else in the package relies on these rules:

* Blank is id 0; a model predicts ``C = len(charset) + 1`` classes; label ids live in ``1..C-1``.
* Models return ``(B, T, C)`` logits and ``(B,)`` output lengths. Only this module turns them into
  fp32 log-probabilities and the ``(T, B, C)`` layout that :func:`torch.nn.functional.ctc_loss`
  expects; target lengths are always passed explicitly.
* A sample is feasible for CTC only if ``T_out >= L + repeats`` (a blank must separate equal
  adjacent labels). Training additionally asks for a safety margin ``T_out >= ratio * L``.
* A path reads as labels by merging repeats, then dropping blanks (:func:`greedy_decode`; the beam
  decoders of :mod:`recognizer.decoding` build on the same rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

BLANK = 0


def num_classes_for(charset_size: int) -> int:
    """Number of output classes for a charset: one per symbol plus the blank."""
    return charset_size + 1


def adjacent_repeats(target: Tensor) -> int:
    """Number of positions where a label equals its predecessor (``"aab"`` has 1)."""
    if target.numel() < 2:
        return 0
    return int((target[1:] == target[:-1]).sum())


def min_output_length(target: Tensor) -> int:
    """The exact CTC bound: the fewest frames that can emit ``target`` (L + adjacent repeats)."""
    return int(target.numel()) + adjacent_repeats(target)


def min_output_lengths(targets: Tensor, target_lengths: Tensor) -> Tensor:
    """Vectorised :func:`min_output_length` for a padded ``(B, S)`` batch of targets.

    Returns:
        ``(B,)`` int64 tensor of ``L + adjacent repeats`` per sample.
    """
    if targets.size(1) < 2:
        return target_lengths.long()
    positions = torch.arange(1, targets.size(1), device=targets.device)
    valid = positions.unsqueeze(0) < target_lengths.unsqueeze(1)  # (B, S-1)
    repeats = ((targets[:, 1:] == targets[:, :-1]) & valid).sum(1)
    return target_lengths.long() + repeats


class LabelError(ValueError):
    """A target id or length that breaks the CTC contract."""


class FeasibilityError(ValueError):
    """A sample whose output is too short for its label."""


def check_targets(targets: Tensor, target_lengths: Tensor, num_classes: int, ids: list[str] | None = None) -> None:
    """Raise :class:`LabelError` unless every real label id lies in ``1..num_classes-1``.

    Args:
        targets: ``(B, S)`` padded label ids (padding beyond ``target_lengths`` is ignored).
        target_lengths: ``(B,)`` label lengths.
        num_classes: ``C``, the size of the model's output layer (blank included).
        ids: optional sample ids, used to name offenders.
    """
    if target_lengths.numel() and int(target_lengths.min()) < 0:
        raise LabelError("negative target length in batch")
    if targets.numel() == 0:
        return
    mask = torch.arange(targets.size(1)).unsqueeze(0) < target_lengths.cpu().unsqueeze(1)
    bad = mask & ((targets.cpu() < 1) | (targets.cpu() >= num_classes))
    if bool(bad.any()):
        rows = bad.any(1).nonzero().flatten().tolist()
        names = [ids[r] if ids else f"#{r}" for r in rows[:5]]
        values = sorted({int(v) for v in targets.cpu()[bad].tolist()})
        raise LabelError(
            f"label ids {values[:10]} outside 1..{num_classes - 1} in samples {names}"
            f"{' ...' if len(rows) > 5 else ''}. Id {BLANK} is the blank and the model has "
            f"{num_classes} classes (charset + blank): the head size and the alphabet disagree, "
            "or the labels were encoded with another alphabet."
        )


def check_feasible(
    output_lengths: Tensor,
    targets: Tensor,
    target_lengths: Tensor,
    ids: list[str] | None = None,
) -> None:
    """Raise :class:`FeasibilityError` for samples below the exact CTC bound ``L + repeats``."""
    need = min_output_lengths(targets.cpu(), target_lengths.cpu())
    bad = (output_lengths.cpu() < need).nonzero().flatten().tolist()
    if bad:
        details = ", ".join(
            f"{ids[i] if ids else f'#{i}'} (frames={int(output_lengths[i])}, needs {int(need[i])})" for i in bad[:5]
        )
        raise FeasibilityError(
            f"{len(bad)} sample(s) have fewer output frames than CTC needs (label length + "
            f"adjacent repeats): {details}. Use wider inputs, less subsampling in the model, or "
            "shorter labels."
        )


@dataclass
class CTCOutput:
    """Result of :meth:`CTCLoss.forward`."""

    loss: Tensor  # () fp32, the reduced loss that is back-propagated
    per_sample: Tensor  # (B,) fp32, unreduced loss of every sample (for naming bad samples)


class CTCLoss(torch.nn.Module):
    """CTC loss on ``(B, T, C)`` logits, computed in fp32 whatever the autocast dtype.

    Args:
        zero_infinity: replace infinite losses (infeasible samples) by 0 and their gradients by 0.
        reduction: ``"mean"`` divides each sample's loss by its label length (at least 1, so an
            empty label never divides by zero), then averages over the batch; ``"sum"`` averages
            the unnormalised losses over the batch.
    """

    def __init__(self, zero_infinity: bool = True, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.zero_infinity = zero_infinity
        self.reduction = reduction

    def forward(self, logits: Tensor, output_lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> CTCOutput:
        """Compute the loss.

        Args:
            logits: ``(B, T, C)`` unnormalised scores, any float dtype.
            output_lengths: ``(B,)`` valid frames per sample (``<= T``).
            targets: ``(B, S)`` padded label ids in ``1..C-1``.
            target_lengths: ``(B,)`` label lengths.
        """
        log_probs = log_probs_tbc(logits)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            per_sample = F.ctc_loss(
                log_probs,
                targets.long(),
                output_lengths.long(),
                target_lengths.long(),
                blank=BLANK,
                reduction="none",
                zero_infinity=self.zero_infinity,
            )
        if self.reduction == "mean":
            loss = (per_sample / target_lengths.clamp(min=1).to(per_sample)).mean()
        else:
            loss = per_sample.mean()
        return CTCOutput(loss=loss, per_sample=per_sample.detach())


def log_probs_tbc(logits: Tensor) -> Tensor:
    """``(B, T, C)`` logits → ``(T, B, C)`` fp32 log-probabilities, the layout CTC expects."""
    return rearrange(logits.float().log_softmax(-1), "b t c -> t b c")


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
