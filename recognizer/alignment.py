"""Alignment picture of one input: the input, the per-frame argmax (blank shaded) and the forced alignment
of the reference.

:func:`align_image` (the command: ``recognizer-align``, :mod:`recognizer.cli.align`) reads the checkpoint
and preprocesses the input as in training; the picture (its three panels are described in
:mod:`recognizer.plots`) is drawn by the library module that the training loop uses too.
"""

from __future__ import annotations

from pathlib import Path

from recognizer.checkpoint import build_model, load_checkpoint
from recognizer.inference import input_dataset
from recognizer.plots import align_sample


def align_image(checkpoint: str | Path, image: str | Path, reference: str | None, out: str | Path) -> Path:
    """Preprocess ``image`` (a line image, or audio for a speech model) as the checkpoint's model
    expects and write the alignment PNG to ``out`` (audio: the log-mel features are drawn)."""
    ckpt = load_checkpoint(checkpoint)
    model, alphabet = build_model(ckpt)
    if not Path(image).is_file():
        raise FileNotFoundError(f"input {image} does not exist")
    dataset, _ = input_dataset(ckpt["config"], [Path(image)])
    return align_sample(model, dataset.load(0), alphabet, reference, out)
