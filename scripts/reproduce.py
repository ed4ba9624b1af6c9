#!/usr/bin/env python3
"""Reproduce a documented recipe and check its metric against RESULTS.md.

Examples::

    python scripts/reproduce.py htr_digits_crnn                  # train, then check test/cer
    python scripts/reproduce.py htr_digits_crnn --metrics outputs/htr_digits_crnn/runs/X/metrics.json
    python scripts/reproduce.py htr_digits_crnn -- trainer.device=cuda   # extra overrides for the run

Reads the recipe's row of the results table (command, metric, value, tolerance), runs the command
with ``hydra.run.dir`` set to a fresh folder, and compares ``metrics.json`` with the documented
value. Exit status: 0 within tolerance, 1 outside it, 2 when there is nothing to check against.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("recipe", "command", "data", "metric", "value", "tolerance", "wall time", "machine")


class ReproduceError(Exception):
    """Nothing to check against (no row, no documented value) or the run failed."""


@dataclass
class Recipe:
    """One row of the results table."""

    name: str
    command: str
    metric: str
    value: float
    tolerance: float
    wall_time: str
    machine: str


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
    value, tolerance = number(row["value"]), number(row["tolerance"])
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


def check(recipe: Recipe, metrics_file: Path) -> tuple[bool, str]:
    """Compare the run's metric with the documented value; return (within tolerance, a one-line verdict)."""
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ReproduceError(f"cannot read the metrics file {metrics_file}: {e}") from None
    if recipe.metric not in metrics:
        raise ReproduceError(f"{metrics_file} has no {recipe.metric}; it has {', '.join(sorted(metrics))}")
    measured = float(metrics[recipe.metric])
    off = measured - recipe.value
    ok = abs(off) <= recipe.tolerance
    verdict = (
        f"{'PASS' if ok else 'FAIL'} {recipe.name}: {recipe.metric}={measured:.4f}, documented "
        f"{recipe.value:.4f} ± {recipe.tolerance:g} ({off:+.4f}{'' if ok else ', outside the tolerance'})"
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
