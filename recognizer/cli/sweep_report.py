"""Summarise a Hydra multirun directory: which job won, which failed and why.

Usage::

    recognizer-sweep-report outputs/htr_digits_crnn/multiruns/2026-11-25_02-10-00
    recognizer-sweep-report SWEEP_DIR --metric val/wer --out reports/

Writes ``sweep_report.md``, ``sweep_report.csv`` and ``sweep_heatmap.png`` into the sweep directory
(or ``--out``) and prints the table and the best job as a ready-to-run command
(:func:`recognizer.sweep_report.write_report`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="recognizer-sweep-report", description=__doc__.split("\n\n")[0], allow_abbrev=False
    )
    parser.add_argument("sweep_dir", help="a multirun directory, e.g. outputs/train/multiruns/<time>")
    parser.add_argument("--metric", help="rank and plot by this metric (default: the sweep's optimized_metric)")
    parser.add_argument("--out", help="write the report files here (default: the sweep directory)")
    args = parser.parse_args(argv)
    from recognizer.errors import user_errors
    from recognizer.sweep_report import best_command, fmt, table_rows, write_report

    with user_errors("recognizer-sweep-report"):  # a message and an exit code (recognizer.errors), no traceback
        report = write_report(args.sweep_dir, args.metric, args.out)
    header, rows = table_rows(report["jobs"], report["metric"], Path(args.sweep_dir))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header[:-2])]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row[:-2], widths)), row[-2][:100])
    for kind, path in report["paths"].items():
        print(f"{kind}: {path}")
    best = report["best"]
    if best is None:
        print("best: none yet (no job has finished)")
    else:
        metric = report["metric"]
        print(f"best: {best.path.relative_to(args.sweep_dir).as_posix()} {metric}={fmt(metric, best.value(metric))}")
        print(best_command(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
