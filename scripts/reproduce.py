#!/usr/bin/env python3
"""Reproduce a documented recipe and check its metric against RESULTS.md.

Examples::

    python scripts/reproduce.py htr_digits_crnn                  # train, then check test/cer
    python scripts/reproduce.py htr_digits_crnn --metrics outputs/htr_digits_crnn/runs/X/metrics.json
    python scripts/reproduce.py htr_digits_crnn -- trainer.device=cuda   # extra overrides for the run

Reads the recipe's row of the results table (command, metric, value, tolerance), runs the command
with ``hydra.run.dir`` set to a fresh folder, and compares ``metrics.json`` with the documented
value. Exit status: 0 within tolerance, 1 outside it, 2 when there is nothing to check against.

A tolerance cell is one of (see :func:`parse_tolerance`):

- ``Wilson 99%, n = 4,466 chars``: the 99% Wilson score interval of the documented error count
  (``round(value × n)``) over the ``n`` scored characters or words, so the band scales with the
  figure; when the run's ``predictions_<split>.tsv`` lies beside its metrics, its count must be ``n``;
- ``± 20%``: a band relative to the documented value;
- ``± 0.01``: an absolute band.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("recipe", "command", "data", "metric", "value", "tolerance", "wall time", "machine")


class ReproduceError(Exception):
    """Nothing to check against (no row, no documented value) or the run failed."""


@dataclass(frozen=True)
class Tolerance:
    """The accepted band ``[low, high]`` around a documented value, and how it was derived.

    ``scored`` is the number of characters or words the band assumes (binomial bands only).
    """

    low: float
    high: float
    text: str
    scored: int | None = None


@dataclass
class Recipe:
    """One row of the results table."""

    name: str
    command: str
    metric: str
    value: float
    tolerance: Tolerance
    wall_time: str
    machine: str


_ABSOLUTE = re.compile(r"±\s*([0-9]*\.?[0-9]+)")
_RELATIVE = re.compile(r"±\s*([0-9]*\.?[0-9]+)\s*%")
_WILSON = re.compile(r"Wilson\s+([0-9]*\.?[0-9]+)\s*%\s*,\s*n\s*=\s*([0-9][0-9,]*)(?:\s+[a-z]+)?", re.IGNORECASE)


def wilson_interval(errors: int, n: int, confidence: float) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``errors / n`` at ``confidence`` (e.g. 0.99).

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0 errors.
    """
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = errors / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def parse_tolerance(text: str, value: float) -> Tolerance | None:
    """The band a tolerance cell describes around ``value``, or None if the cell holds no tolerance yet."""
    text = text.strip()
    if m := _WILSON.fullmatch(text):
        confidence, n = float(m[1]) / 100, int(m[2].replace(",", ""))
        if not 0 < confidence < 1 or n < 1:
            return None
        errors = round(value * n)
        low, high = wilson_interval(errors, n, confidence)
        return Tolerance(low, high, f"(Wilson {m[1]}% of {errors}/{n}: [{low:.4f}, {high:.4f}])", n)
    if m := _RELATIVE.fullmatch(text):
        band = value * float(m[1]) / 100
        return Tolerance(value - band, value + band, f"± {m[1]}% [{value - band:.4f}, {value + band:.4f}]")
    if m := _ABSOLUTE.fullmatch(text):
        band = float(m[1])
        return Tolerance(value - band, value + band, f"± {band:g}")
    return None


def cells(line: str) -> list[str]:
    return [c.strip().strip("`").strip() for c in line.strip().strip("|").split("|")]


def read_table(results: Path) -> dict[str, dict[str, str]]:
    """The rows of the first table whose header is :data:`COLUMNS`, keyed by recipe name."""
    lines = results.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and tuple(cells(line)) == COLUMNS:
            rows = {}
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                values = dict(zip(COLUMNS, cells(row)))
                rows[values["recipe"]] = values
            return rows
    raise ReproduceError(f"{results} has no results table with the columns: | {' | '.join(COLUMNS)} |")


def number(text: str) -> float | None:
    try:
        return float(text.replace("±", "").strip())
    except ValueError:
        return None


def read_recipe(results: Path, name: str) -> Recipe:
    """The documented row of recipe ``name``.

    Raises:
        ReproduceError: no such row, or its value or tolerance is not a number yet.
    """
    rows = read_table(results)
    if name not in rows:
        raise ReproduceError(f"no recipe {name!r} in {results}; documented: {', '.join(sorted(rows))}")
    row = rows[name]
    value = number(row["value"])
    tolerance = None if value is None else parse_tolerance(row["tolerance"], value)
    if value is None or tolerance is None:
        raise ReproduceError(
            f"{name}: {results} documents no value to check against yet "
            f"(value {row['value']!r}, tolerance {row['tolerance']!r}); run `{row['command']}` and fill in the row"
        )
    return Recipe(name, row["command"], row["metric"], value, tolerance, row["wall time"], row["machine"])


def program(name: str) -> str:
    """A console script of this environment (beside its Python), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else (shutil.which(name) or name)


def run_recipe(recipe: Recipe, run_dir: Path, extra: list[str]) -> Path:
    """Run the documented command (plus ``extra`` overrides) into ``run_dir``; return its metrics.json."""
    command = [*shlex.split(recipe.command), *extra, f"hydra.run.dir={run_dir}"]
    print("+ " + shlex.join(command), flush=True)
    if subprocess.run([program(command[0]), *command[1:]], cwd=ROOT).returncode != 0:
        raise ReproduceError(f"{recipe.name}: the command failed; see {run_dir}/train.log")
    return run_dir / "metrics.json"


def scored_units(predictions: Path, metric: str) -> int:
    """Reference characters (``*/cer``) or words (``*/wer``) in a ``predictions_<split>.tsv``, as metrics count them."""
    with predictions.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\"))[1:]
    if metric.endswith("/wer"):
        return sum(len(row[1].split()) for row in rows)
    return sum(len(row[1]) for row in rows)


def check_scored(recipe: Recipe, metrics_file: Path) -> None:
    """A binomial band holds for the documented ``n`` only: the run beside ``metrics_file`` must have scored as many."""
    predictions = metrics_file.parent / f"predictions_{recipe.metric.split('/')[0]}.tsv"
    if recipe.tolerance.scored is None or not predictions.is_file():
        return
    n = scored_units(predictions, recipe.metric)
    if n != recipe.tolerance.scored:
        unit = "words" if recipe.metric.endswith("/wer") else "characters"
        raise ReproduceError(
            f"{predictions} scores {n} {unit}, but the tolerance of {recipe.name} in RESULTS.md is for "
            f"n = {recipe.tolerance.scored}: the run used other data (split sizes, seed or filters); "
            "rerun with the documented data"
        )


def check(recipe: Recipe, metrics_file: Path) -> tuple[bool, str]:
    """Compare the run's metric with the documented value; return (within tolerance, a one-line verdict)."""
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ReproduceError(f"cannot read the metrics file {metrics_file}: {e}") from None
    if recipe.metric not in metrics:
        raise ReproduceError(f"{metrics_file} has no {recipe.metric}; it has {', '.join(sorted(metrics))}")
    check_scored(recipe, metrics_file)
    measured = float(metrics[recipe.metric])
    off = measured - recipe.value
    ok = recipe.tolerance.low <= measured <= recipe.tolerance.high
    verdict = (
        f"{'PASS' if ok else 'FAIL'} {recipe.name}: {recipe.metric}={measured:.4f}, documented "
        f"{recipe.value:.4f} {recipe.tolerance.text} ({off:+.4f}{'' if ok else ', outside the tolerance'})"
    )
    return ok, verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Hydra overrides for the run go after --.", allow_abbrev=False
    )
    parser.add_argument("recipe", help="a row of the results table, e.g. htr_digits_crnn")
    parser.add_argument("--results", type=Path, default=ROOT / "RESULTS.md", help="the results table")
    parser.add_argument("--metrics", type=Path, help="check this metrics.json instead of training again")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "reproduce", help="parent of the run folder")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args, overrides = parser.parse_args(argv[:split]), argv[split + 1 :]  # after --: Hydra overrides
    try:
        recipe = read_recipe(args.results, args.recipe)
        metrics_file = args.metrics
        if metrics_file is None:
            start = time.perf_counter()
            run_dir = args.out / recipe.name / time.strftime("%Y-%m-%d_%H-%M-%S")
            metrics_file = run_recipe(recipe, run_dir, overrides)
            minutes = (time.perf_counter() - start) / 60
            print(f"wall time {minutes:.1f} min (documented: {recipe.wall_time} on {recipe.machine})")
        ok, verdict = check(recipe, metrics_file)
    except ReproduceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(verdict)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
