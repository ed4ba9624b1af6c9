"""What a base model buys: train on N lines from scratch and from a base checkpoint, at equal steps.

For each N of ``--lines`` (``all``: every train line) this runs the training command twice, the same N
seeded lines (``trainer.train_samples``) and the same number of optimizer steps (``--steps``, rounded up to
whole epochs of N lines, so that a run ends on a validation), so the two runs of a row take about the same
wall time:

- ``scratch``: the recipe as it is;
- ``base``: ``trainer.init_from=BASE trainer.init_alphabet=union`` (the base model's symbols kept, the new
  ones added with fresh output rows) and ``trainer.freeze_backbone_steps`` from ``--freeze``.

Each run's schedule spans those steps (``trainer.max_epochs`` is derived from N and the batch size) and it
validates about ``--validations`` times, the last one at its end, so its best checkpoint (by val CER, the one
tested) may be its final weights. Runs go to
``OUT/<start>_<N>/`` and resume there (``trainer.resume=auto``), so a stopped table continues where it
was. The table of test CER (and val CER, steps, minutes of training) is written to ``OUT/table.md`` and
``OUT/table.json``, the plot of CER against lines to ``OUT/cer_vs_lines.png``.

A second base on the same lines: ``--starts base`` trains only its fine-tuned runs (the runs from scratch do
not depend on the base), ``--label`` names its column and curve, and ``--include FIRST/table.json`` shows the
first table's runs (from scratch and its base) beside them, in the table and the plot.

Usage::

    python scripts/finetune_table.py --base BASE/checkpoints/best.ckpt --lines 100 300 1000 all \\
        --steps 1200 --out runs/ft -- experiment=htr_hooker_crnn
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

STARTS = ("scratch", "base")


@dataclass
class Plan:
    start: str  # scratch | base
    lines: int | None  # None: all train lines
    overrides: list[str]

    @property
    def label(self) -> str:
        """The line count as the table shows it: ``100`` or ``all``."""
        return "all" if self.lines is None else str(self.lines)

    @property
    def name(self) -> str:
        return f"{self.start}_{self.label}"


def plan_runs(
    lines: list[int | None],
    steps: int,
    batch_size: int,
    all_lines: int,
    base: str,
    freeze: int = 0,
    validations: int = 8,
) -> list[Plan]:
    """The overrides of every run: for each N, from scratch then from ``base``, ``steps`` steps each.

    Args:
        lines: train line counts; None for all of them (``all_lines``).
        steps: optimizer steps per run, rounded up to whole epochs (equal for the two runs of a row).
        batch_size: the recipe's ``data.batch_size`` (steps per epoch = ceil(N / batch_size)).
        all_lines: how many train lines "all" is, for its epoch count.
        base: the base checkpoint.
        freeze: ``trainer.freeze_backbone_steps`` of the fine-tuned runs.
        validations: about how many validations a run makes.
    """
    if steps < 1 or batch_size < 1 or validations < 1:
        raise ValueError(f"need steps, batch size and validations >= 1, got {steps}, {batch_size}, {validations}")
    plans = []
    for n in lines:
        count = all_lines if n is None else n
        if count < 1:
            raise ValueError(f"a run needs at least 1 train line, got {count}")
        epochs = math.ceil(steps / math.ceil(count / batch_size))
        common = [
            *([] if n is None else [f"trainer.train_samples={n}"]),
            f"trainer.max_epochs={epochs}",
            f"trainer.val_every_n_epochs={max(1, epochs // validations)}",
            "trainer.early_stopping_patience=null",  # equal steps: no run stops before the others
        ]
        finetune = [
            f"trainer.init_from={base}",
            "trainer.init_alphabet=union",
            f"trainer.freeze_backbone_steps={freeze}",
        ]
        plans.append(Plan("scratch", n, common))
        plans.append(Plan("base", n, [*common, *finetune]))
    return plans


def run(plan: Plan, recipe: list[str], out: Path, command: list[str]) -> dict:
    """Train ``plan`` (resuming its folder; nothing to do when it has finished) and return its final metrics."""
    folder = out / plan.name
    metrics_file = folder / "metrics.json"
    if not metrics_file.exists():
        args = [*command, *recipe, *plan.overrides, "trainer.resume=auto", "trainer.progress_bar=false"]
        args.append(f"hydra.run.dir={folder}")
        print("+", " ".join(args), flush=True)
        subprocess.run(args, check=True)
    return json.loads(metrics_file.read_text())


SCRATCH = "from scratch"
BASE = "from the base"  # a base's column when --label names none


def column(row: dict) -> str:
    """The table column (and plot curve) of a run: ``from scratch``, or its base's label."""
    return SCRATCH if row["start"] == "scratch" else row.get("label", BASE)


def table(rows: list[dict]) -> str:
    """Markdown: one row per N, test CER (val CER) from scratch and from each base (in the order they come),
    steps and minutes of training (``train/time``: validation included, across resumes; — where a run has none)."""
    columns = list(dict.fromkeys([SCRATCH, *(column(r) for r in rows)]))
    short = ["scratch" if c == SCRATCH else c.removeprefix("from ") for c in columns]
    lines = [
        "| train lines | " + " | ".join(f"{c}: test CER (val)" for c in columns) + " | steps "
        f"| minutes ({' / '.join(short)}) |",
        "|---|" + "---|" * len(columns) + "---|---|",
    ]
    by_n: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_n.setdefault(r["lines"], {})[column(r)] = r
    for n, runs in by_n.items():
        cells = [f"{runs[c]['test/cer']:.3f} ({runs[c]['val/cer']:.3f})" if c in runs else "—" for c in columns]
        steps = next(iter(runs.values()))["train/steps"]
        minutes = [f"{runs[c]['train/time'] / 60:.1f}" if "train/time" in runs.get(c, {}) else "—" for c in columns]
        lines.append(f"| {n} | {' | '.join(cells)} | {steps} | {' / '.join(minutes)} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Test CER against train lines (``count``, log axis), one curve per column of the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label in dict.fromkeys(column(r) for r in rows):
        points = sorted((r["count"], r["test/cer"]) for r in rows if column(r) == label)
        ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("train lines")
    ax.set_ylabel("test CER")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the base checkpoint (a best.ckpt)")
    parser.add_argument("--lines", nargs="+", default=["100", "300", "1000", "all"], help="train line counts, or all")
    parser.add_argument("--all-lines", type=int, required=True, help="how many train lines the recipe trains on")
    parser.add_argument("--steps", type=int, default=1200, help="optimizer steps of every run")
    parser.add_argument("--batch-size", type=int, default=16, help="the recipe's data.batch_size")
    parser.add_argument(
        "--starts",
        nargs="+",
        choices=STARTS,
        default=list(STARTS),
        help="which runs of a row: scratch, base or both (the scratch runs do not depend on the base, so a table "
        "of a second base need not train them again)",
    )
    parser.add_argument("--label", default=BASE, help="the base's column and curve, e.g. 'from the Copiste model'")
    parser.add_argument(
        "--include",
        nargs="+",
        type=Path,
        default=[],
        help="table.json files of earlier tables (another base, or the runs from scratch) to show beside these runs",
    )
    parser.add_argument("--freeze", type=int, default=0, help="trainer.freeze_backbone_steps of the fine-tuned runs")
    parser.add_argument("--validations", type=int, default=8, help="about how many validations per run")
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs and the table")
    parser.add_argument("--command", default="recognizer-train", help="the training command")
    parser.add_argument("recipe", nargs=argparse.REMAINDER, help="the recipe's overrides, after --")
    args = parser.parse_args(argv)
    recipe = [a for a in args.recipe if a != "--"]
    counts = [None if n == "all" else int(n) for n in args.lines]
    plans = plan_runs(counts, args.steps, args.batch_size, args.all_lines, args.base, args.freeze, args.validations)
    rows = []
    for plan in (p for p in plans if p.start in args.starts):
        metrics = run(plan, recipe, args.out, args.command.split())
        count = args.all_lines if plan.lines is None else plan.lines
        label = SCRATCH if plan.start == "scratch" else args.label
        rows.append({"start": plan.start, "label": label, "lines": plan.label, "count": count, **metrics})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.json").write_text(json.dumps(rows, indent=2))
    mine = {(column(r), r["lines"]) for r in rows}
    included = [r for f in args.include for r in json.loads(f.read_text()) if (column(r), r["lines"]) not in mine]
    shown = sorted(included + rows, key=lambda r: r["count"])  # stable: columns keep the order they come in
    markdown = table(shown)
    (args.out / "table.md").write_text(markdown)
    plot(shown, args.out / "cer_vs_lines.png")
    sys.stdout.write(markdown)


if __name__ == "__main__":
    main()
