"""Alignment picture: the input, the per-frame argmax (blank shaded) and the forced alignment of the reference.

Example::

    recognizer-align best.ckpt line.png "07765" --out align.png
    recognizer-align asr.ckpt utterance.wav "four two" --out align.png

This entry point reads the checkpoint and preprocesses the input as in training; the picture (its
three panels are described in :mod:`recognizer.plots`) is drawn by the library module that the
training loop uses too.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from recognizer.checkpoint import build_model, load_checkpoint
from recognizer.errors import user_errors
from recognizer.plots import align_sample
from recognizer.transcribe import input_dataset


def align_image(checkpoint: str | Path, image: str | Path, reference: str | None, out: str | Path) -> Path:
    """Preprocess ``image`` (a line image, or audio for a speech model) as the checkpoint's model
    expects and write the alignment PNG to ``out`` (audio: the log-mel features are drawn)."""
    ckpt = load_checkpoint(checkpoint)
    model, alphabet = build_model(ckpt)
    if not Path(image).is_file():
        raise FileNotFoundError(f"input {image} does not exist")
    dataset, _ = input_dataset(ckpt["config"], [Path(image)])
    return align_sample(model, dataset.load(0), alphabet, reference, out)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="recognizer-align", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a .ckpt written by recognizer-train")
    p.add_argument("image", help="one line image (or audio file, for a speech model)")
    p.add_argument("reference", nargs="?", help="the expected transcript (omit to draw input and argmax only)")
    p.add_argument("--out", default="alignment.png", help="PNG to write (default alignment.png)")
    args = p.parse_args(argv)
    with user_errors("recognizer-align"):  # a message and an exit code (recognizer.errors), no traceback
        written = align_image(args.checkpoint, args.image, args.reference, args.out)
    print(written)


if __name__ == "__main__":
    main()
