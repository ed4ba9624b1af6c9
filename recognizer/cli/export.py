"""Export a checkpoint's model to TorchScript and ONNX, with the preprocessing it expects beside it.

Examples::

    recognizer-export best.ckpt --out exported/
    recognizer-export best.ckpt --out exported/ --formats onnx

What the files hold and how to feed the exported models: :mod:`recognizer.export`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="recognizer-export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a .ckpt written by recognizer-train")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--formats", nargs="+", help="torchscript and/or onnx (default both)")
    args = p.parse_args(argv)
    from recognizer.errors import user_errors
    from recognizer.export import FORMATS, export

    with user_errors("recognizer-export"):  # a message and an exit code (recognizer.errors), no traceback
        written = export(args.checkpoint, args.out, args.formats or FORMATS)
    for name, path in written.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
