"""Alignment picture: the input, the per-frame argmax (blank shaded) and the forced alignment of the reference.

Example::

    recognizer-align best.ckpt line.png "07765" --out align.png
    recognizer-align asr.ckpt utterance.wav "four two" --out align.png

The picture: :func:`recognizer.inference.align_image` and :mod:`recognizer.plots`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="recognizer-align", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a .ckpt written by recognizer-train")
    p.add_argument("image", help="one line image (or audio file, for a speech model)")
    p.add_argument("reference", nargs="?", help="the expected transcript (omit to draw input and argmax only)")
    p.add_argument("--out", default="alignment.png", help="PNG to write (default alignment.png)")
    args = p.parse_args(argv)
    from recognizer.errors import user_errors
    from recognizer.inference import align_image

    with user_errors("recognizer-align"):  # a message and an exit code (recognizer.errors), no traceback
        written = align_image(args.checkpoint, args.image, args.reference, args.out)
    print(written)


if __name__ == "__main__":
    main()
