"""Score predictions against references: CER/WER with substitutions, deletions, insertions, worst lines.

Examples::

    recognizer-score outputs/eval/runs/DATE/predictions_test.tsv
    recognizer-score hypotheses.jsonl --ref references.tsv --worst 20

The input formats: :mod:`recognizer.score`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="recognizer-score", description=__doc__.split("\n\n")[0])
    p.add_argument("predictions", help="predictions TSV (id, reference, hypothesis), or hypotheses with --ref")
    p.add_argument(
        "--ref",
        help="references matched to the hypotheses by id: TSV id<TAB>text, or JSONL with text and the first of "
        "id, path, image, audio_filepath (data manifests work as they are)",
    )
    p.add_argument("--worst", type=int, default=10, help="how many worst lines to print (default 10)")
    args = p.parse_args(argv)
    if args.worst < 0:
        p.error(f"--worst must be >= 0, got {args.worst}")
    from recognizer.errors import user_errors
    from recognizer.score import format_report, pair, read_predictions, read_texts, score

    with user_errors("recognizer-score"):  # a message and an exit code (recognizer.errors), no traceback
        path = Path(args.predictions)
        if args.ref:
            rows = pair(read_texts(path), read_texts(Path(args.ref)), path, Path(args.ref))
        else:
            rows = read_predictions(path)
    print(format_report(score(rows), args.worst))


if __name__ == "__main__":
    main()
