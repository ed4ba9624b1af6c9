"""Alignment pictures, drawn by ``recognizer-align`` and by the training loop (``trainer.alignment_samples``).

Three panels share the x axis (input columns; frame ``t`` covers columns ``t*W/T .. (t+1)*W/T``):
the preprocessed input; the per-frame argmax with its probability (blank frames shaded grey); the
reference's CTC forced alignment (``torchaudio.functional.forced_align``). Mostly grey frames with an
empty hypothesis mean blank collapse; a reference that cannot be aligned (fewer frames than labels +
repeats) is named in the title: the input is too narrow for the model's subsampling.

A library module: :func:`recognizer.inference.align_image` (behind ``recognizer-align``) and the loop both import it;
it imports neither, nor the commands (:mod:`recognizer.cli`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import torch
from torch import Tensor, nn
from torchaudio.functional import forced_align

from recognizer.alphabet import Alphabet
from recognizer.ctc import BLANK, min_output_length


def forced_alignment(log_probs: Tensor, target: Sequence[int]) -> list[int] | None:
    """Best CTC path of ``target`` through ``(T, C)`` log-probs: a label id (0 = blank) per frame.

    Returns:
        ``T`` ids, or None when ``T < len(target) + repeats`` (no path exists).
    """
    targets = torch.tensor([list(target)], dtype=torch.int32)
    if log_probs.size(0) < min_output_length(targets[0]):
        return None
    if not target:
        return [BLANK] * log_probs.size(0)
    path, _ = forced_align(log_probs.float().unsqueeze(0).cpu(), targets, blank=BLANK)
    return path[0].tolist()


def plot_alignment(
    image: Tensor, log_probs: Tensor, alphabet: Alphabet, reference: str | None, path: str | Path
) -> Path:
    """Draw the three panels into a PNG.

    Args:
        image: ``(H, W)`` preprocessed input (as the model saw it).
        log_probs: ``(T, C)`` log-probabilities over the valid frames.
        alphabet: maps ids ``1..C-1`` to symbols.
        reference: the expected text, or None to draw the first two panels only.
        path: the PNG to write.
    """
    frames, width = log_probs.size(0), image.size(-1)
    step = width / max(frames, 1)
    probs, best = log_probs.exp().max(-1)  # (T,), (T,)
    hypothesis = alphabet.decode([i for t, i in enumerate(best.tolist()) if i and (t == 0 or i != best[t - 1])])
    panels = 3 if reference is not None else 2
    fig, axes = plt.subplots(panels, 1, sharex=True, figsize=(max(6.0, width / 20), 1.2 + 1.3 * panels))
    axes[0].imshow(image.numpy(), cmap="gray_r", aspect="auto", extent=(0, width, image.size(0), 0))
    axes[0].set_title(f"input {image.size(0)}×{width}, {frames} frames; greedy: {hypothesis!r}", fontsize=9)
    _frame_strip(axes[1], best.tolist(), probs.tolist(), step, alphabet)
    axes[1].set_ylabel("argmax", fontsize=8)
    if reference is not None:
        target = alphabet.encode(reference, "unk" if alphabet.has_unk else "error")
        aligned = forced_alignment(log_probs, target)
        if aligned is None:
            need = min_output_length(torch.tensor(target))
            axes[2].set_title(
                f"cannot align {reference!r}: {frames} frames < {need} (labels + repeats)",
                fontsize=9,
                color="red",
            )
        else:
            path_probs = log_probs.exp().gather(1, torch.tensor(aligned).unsqueeze(1)).squeeze(1)
            _frame_strip(axes[2], aligned, path_probs.tolist(), step, alphabet)
            axes[2].set_title(f"forced alignment of {reference!r}", fontsize=9)
        axes[2].set_ylabel("forced", fontsize=8)
    axes[-1].set_xlabel("input column")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _frame_strip(ax: plt.Axes, ids: list[int], probs: list[float], step: float, alphabet: Alphabet) -> None:
    """One box per frame: grey for blank, the symbol's text otherwise; bar height = probability."""
    for t, (i, p) in enumerate(zip(ids, probs)):
        x = t * step
        ax.bar(x, p, width=step, align="edge", color="0.8" if i == BLANK else "tab:blue", edgecolor="white")
        if i != BLANK:
            ax.text(x + step / 2, 1.05, alphabet.symbols[i - 1], ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.3)
    ax.set_yticks([0, 1])


@torch.no_grad()
def align_sample(model: nn.Module, image: Tensor, alphabet: Alphabet, reference: str | None, path: str | Path) -> Path:
    """Forward one ``(1, H, W)`` input through ``model`` and write its alignment picture (usable per epoch)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, lengths = model(image.unsqueeze(0).to(device), torch.tensor([image.size(-1)], device=device))
    model.train(was_training)
    log_probs = logits[0, : int(lengths[0])].float().log_softmax(-1).cpu()  # (T, C)
    return plot_alignment(image[0].cpu(), log_probs, alphabet, reference, path)
