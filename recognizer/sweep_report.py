"""Summarise a Hydra multirun directory: which job won, which failed and why.

:func:`write_report` writes ``sweep_report.md``, ``sweep_report.csv`` and ``sweep_heatmap.png`` (the
metric over lr × weight_decay; failed jobs marked) into the sweep directory (or ``out_dir``); the
command ``recognizer-sweep-report`` (:mod:`recognizer.cli.sweep_report`) also prints the table and the
best job as a ready-to-run command. Works while a sweep is still running: jobs without final metrics
are listed as ``unfinished`` with their last validation.

A job is any folder below the sweep directory with ``.hydra/overrides.yaml``. Its state:
``done`` (``metrics.json``), ``failed`` (``failure.json``, written when training diverged) or
``unfinished`` (neither yet).

One ranking serves the table, the CSV, the heatmap's frame and the best command (:func:`rank`):
finished jobs first, by the metric (lower is better), ties broken by ``val/loss`` and then by the
job number Hydra gave the job (its order in the sweep).
"""

from __future__ import annotations

import csv
import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from recognizer.sweeps import FAILURE_FILE

#: Metrics shown in the table, in this order, when any job has them.
METRIC_COLUMNS = ("val/cer", "val/wer", "val/loss", "test/cer", "test/wer", "train/steps", "train/time")
#: Overrides that select a sweep or a launcher: left out of the command that reruns one job.
SWEEP_ONLY_PREFIXES = ("hparams_search=", "hydra/", "hydra.", "+hydra", "~hydra")
STATUS_ORDER = {"done": 0, "unfinished": 1, "failed": 2}
#: The first tie-break of :func:`rank` (then the job number).
TIE_BREAK = "val/loss"


@dataclass
class Job:
    """One job of a sweep.

    Attributes:
        path: the job's directory.
        overrides: its Hydra overrides, as on the command line.
        status: ``done`` | ``failed`` | ``unfinished``.
        metrics: final metrics (done), the last validation (unfinished) or {} (failed).
        lr: ``optimizer.lr`` of its config, if any.
        weight_decay: ``optimizer.weight_decay`` of its config, if any.
        cause: why it failed (failed jobs), or where it is (unfinished).
        num: Hydra's job number (``hydra.job.num``), or None when ``.hydra/hydra.yaml`` lacks it.
    """

    path: Path
    overrides: list[str]
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    lr: float | None = None
    weight_decay: float | None = None
    cause: str = ""
    num: int | None = None

    def value(self, metric: str) -> float:
        """The metric for ranking: ``inf`` when missing, not finite (a NaN loss) or failed, so the job sorts last."""
        if self.status == "failed":
            return math.inf
        value = float(self.metrics.get(metric, math.inf))
        return value if math.isfinite(value) else math.inf

    def override_map(self) -> dict[str, str]:
        pairs = [o.split("=", 1) for o in self.overrides]
        return {pair[0]: pair[1] if len(pair) == 2 else "" for pair in pairs}


def last_validation(metrics_jsonl: Path) -> dict[str, float]:
    """The last ``val/*`` record of a running job's ``metrics.jsonl`` (with its step), or {}."""
    if not metrics_jsonl.is_file():
        return {}
    last: dict[str, float] = {}
    for line in metrics_jsonl.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        if any(k.startswith("val/") for k in row):
            last = {k: v for k, v in row.items() if k.startswith("val/")} | {"train/steps": row["step"]}
    return last


def describe_failure(failure: dict) -> str:
    step = f" at step {failure['step']}" if failure.get("step") is not None else ""
    message = " ".join(str(failure.get("message", "")).split())
    return f"{failure.get('status', 'failed')}{step}: {failure.get('type', 'error')}: {message}"


def read_job(job_dir: Path) -> Job:
    """Read one job directory (see the module docstring for what makes its status)."""
    overrides = [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
    lr = weight_decay = None
    config_file = job_dir / ".hydra" / "config.yaml"
    if config_file.is_file():  # select: None when a config has no optimizer node
        config = OmegaConf.load(config_file)
        lr, weight_decay = OmegaConf.select(config, "optimizer.lr"), OmegaConf.select(config, "optimizer.weight_decay")
    hydra_file = job_dir / ".hydra" / "hydra.yaml"
    num = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.job.num") if hydra_file.is_file() else None
    job = Job(job_dir, overrides, "unfinished", lr=lr, weight_decay=weight_decay, num=num)
    if (job_dir / FAILURE_FILE).is_file():
        failure = json.loads((job_dir / FAILURE_FILE).read_text(encoding="utf-8"))
        job.status, job.cause = "failed", describe_failure(failure)
    elif (job_dir / "metrics.json").is_file():
        job.status = "done"
        job.metrics = json.loads((job_dir / "metrics.json").read_text(encoding="utf-8"))
    else:
        job.metrics = last_validation(job_dir / "metrics.jsonl")
        step = job.metrics.get("train/steps")
        job.cause = f"running or stopped; last validation at step {step}" if step else "no validation yet"
    return job


def read_sweep(sweep_dir: str | Path) -> list[Job]:
    """Every job below ``sweep_dir``, in directory order.

    Raises:
        FileNotFoundError: ``sweep_dir`` does not exist or holds no job.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory {root} does not exist")
    job_dirs = sorted(p.parent.parent for p in root.glob("**/.hydra/overrides.yaml"))
    if not job_dirs:
        raise FileNotFoundError(
            f"no jobs in {root}: expected folders with .hydra/overrides.yaml, as `recognizer-train -m ...` "
            "writes under outputs/<task>/multiruns/<time>/"
        )
    return [read_job(d) for d in job_dirs]


def sweep_metric(sweep_dir: str | Path) -> str:
    """The sweep's ``optimized_metric`` (from ``multirun.yaml``), or ``val/cer``."""
    multirun = Path(sweep_dir) / "multirun.yaml"
    if multirun.is_file():
        return str(OmegaConf.select(OmegaConf.load(multirun), "optimized_metric", default="val/cer"))
    return "val/cer"


def rank(jobs: Sequence[Job], metric: str) -> list[Job]:
    """Finished jobs by ``metric`` (lower is better), then unfinished ones, then failed ones.

    Ties (e.g. every job still at CER 1.0 early in training) go to the lower ``val/loss``, then to
    the lower job number (then the folder name, for jobs without one). The table, the heatmap's
    frame and the best command all use this order.
    """

    def key(j: Job) -> tuple:
        number = j.num if j.num is not None else math.inf
        return (STATUS_ORDER[j.status], j.value(metric), j.value(TIE_BREAK), number, str(j.path))

    return sorted(jobs, key=key)


def best_job(jobs: Sequence[Job], metric: str) -> Job | None:
    """The first of :func:`rank` if it finished with a finite ``metric``, else None."""
    ranked = rank(jobs, metric)
    if ranked and ranked[0].status == "done" and math.isfinite(ranked[0].value(metric)):
        return ranked[0]
    return None


def varying_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value differs between jobs (the swept ones), in first-seen order."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.override_map()))
    return [k for k in keys if len({j.override_map().get(k) for j in jobs}) > 1]


def common_overrides(jobs: Sequence[Job]) -> list[str]:
    varying = set(varying_keys(jobs))
    return [o for o in jobs[0].overrides if o.split("=", 1)[0] not in varying] if jobs else []


def best_command(job: Job, program: str = "recognizer-train") -> str:
    """A command that reruns ``job`` alone: its overrides without the sweep and launcher choices."""
    kept = [o for o in job.overrides if not o.startswith(SWEEP_ONLY_PREFIXES)]
    return " ".join([program, *(shlex.quote(o) for o in kept)])


def fmt(metric: str, value: float | None) -> str:
    """A metric value for the table: steps as an integer, seconds rounded, rates with 4 decimals."""
    if value is None:
        return ""
    if metric == "train/steps":
        return str(int(value))
    if metric == "train/time":
        return f"{value:.0f}"
    return f"{value:.4f}"


def short_cause(cause: str, max_chars: int = 110) -> str:
    """The first clause of a failure message (the full one is in the CSV and ``failure.json``)."""
    first = cause.split(";")[0]
    return first if len(first) <= max_chars else first[: max_chars - 1] + "…"


def table_rows(
    jobs: Sequence[Job], metric: str, sweep_dir: Path, full_cause: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Header and ranked rows of the table (shared by Markdown, CSV and the console)."""
    keys = varying_keys(jobs) or sorted({k for j in jobs for k in j.override_map()})
    metrics = [m for m in dict.fromkeys([metric, *METRIC_COLUMNS]) if any(m in j.metrics for j in jobs)]
    header = ["rank", "status", *keys, *metrics, "cause", "job"]
    rows = []
    for i, job in enumerate(rank(jobs, metric), start=1):
        values = job.override_map()
        rows.append(
            [
                str(i),
                job.status,
                *(values.get(k, "") for k in keys),
                *(fmt(m, job.metrics.get(m)) for m in metrics),
                job.cause if full_cause else short_cause(job.cause),
                job.path.relative_to(sweep_dir).as_posix(),
            ]
        )
    return header, rows


def markdown(jobs: Sequence[Job], metric: str, sweep_dir: Path) -> str:
    header, rows = table_rows(jobs, metric, sweep_dir)
    counts = {s: sum(j.status == s for j in jobs) for s in STATUS_ORDER}
    lines = [
        f"# Sweep report: `{sweep_dir}`",
        "",
        f"{len(jobs)} jobs: {counts['done']} done, {counts['failed']} failed, {counts['unfinished']} unfinished. "
        f"Sorted by `{metric}` (lower is better), ties by `{TIE_BREAK}`, then by job number.",
        "",
        f"Common overrides: `{' '.join(common_overrides(jobs)) or '(none)'}`",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    best = best_job(jobs, metric)
    if best is not None:
        lines += ["", f"Best ({metric}={fmt(metric, best.value(metric))}):", "", "```bash", best_command(best), "```"]
    return "\n".join(lines) + "\n"


def write_csv(jobs: Sequence[Job], metric: str, sweep_dir: Path, path: Path) -> None:
    header, rows = table_rows(jobs, metric, sweep_dir, full_cause=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*header, "overrides"])
        for row, job in zip(rows, rank(jobs, metric)):
            writer.writerow([*row, " ".join(job.overrides)])


def is_grid(jobs: Sequence[Job], max_values: int = 12) -> bool:
    """A few distinct lr and weight-decay values (a grid) rather than continuous samples (Optuna)."""
    lrs = {j.lr for j in jobs}
    wds = {j.weight_decay for j in jobs}
    return len(lrs) <= max_values and len(wds) <= max_values and len(lrs) * len(wds) <= 2 * len(jobs)


def plot_heatmap(jobs: Sequence[Job], metric: str, path: Path) -> bool:
    """Plot ``metric`` over lr × weight_decay: a grid as a heatmap, random samples as a scatter.

    Failed jobs are marked ✗ with the step they diverged at; the best job of :func:`rank` is framed
    (the same job as the table's first row and the best command). Returns False
    (and writes nothing) when the jobs do not vary lr and weight decay.
    """
    best = best_job(jobs, metric)
    jobs = [j for j in jobs if j.lr is not None and j.weight_decay is not None]
    if best not in jobs:
        best = None  # (the best job has no lr/weight decay to place it by)
    if len({j.lr for j in jobs}) < 2 and len({j.weight_decay for j in jobs}) < 2:
        return False
    try:
        import matplotlib
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("the sweep heatmap needs matplotlib: pip install -e '.[sweep]'") from error
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    if is_grid(jobs):
        _grid(ax, fig, jobs, metric, best)
    else:
        _scatter(ax, fig, jobs, metric, best)
    done = sum(j.status == "done" for j in jobs)
    failed = sum(j.status == "failed" for j in jobs)
    ax.set_title(f"{metric} over lr × weight decay ({done} done, {failed} failed, lower is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _grid(ax, fig, jobs: Sequence[Job], metric: str, best: Job | None) -> None:
    import numpy as np

    points = [(j.lr, j.weight_decay, j) for j in jobs if j.lr is not None and j.weight_decay is not None]
    lrs = sorted({lr for lr, _, _ in points}, reverse=True)
    wds = sorted({wd for _, wd, _ in points})
    cells: dict[tuple[int, int], list[Job]] = {}
    for lr, wd, j in points:
        cells.setdefault((lrs.index(lr), wds.index(wd)), []).append(j)
    values = np.full((len(lrs), len(wds)), np.nan)
    for (r, c), group in cells.items():
        finished = [j.value(metric) for j in group if j.status == "done" and math.isfinite(j.value(metric))]
        if finished:
            values[r, c] = float(np.mean(finished))  # several seeds per cell: their mean
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis_r", aspect="auto")
    ax.set_facecolor("#d9d9d9")
    fig.colorbar(image, ax=ax, label=metric)
    for (r, c), group in cells.items():
        if math.isfinite(values[r, c]):
            text, color = f"{values[r, c]:.4f}", "white" if values[r, c] > np.nanmean(values) else "black"
        elif any(j.status == "failed" for j in group):
            step = next(j.cause for j in group if j.status == "failed").split(":")[0]
            text, color = "✗ " + step.replace(" at ", "\n"), "#b00020"
        else:
            text, color = "unfinished", "#555555"
        ax.text(c, r, text, ha="center", va="center", fontsize=9, color=color, fontweight="bold")
    if best is not None and best.lr is not None and best.weight_decay is not None:
        # the best job's cell (with several seeds per cell, not always the cell of the best mean)
        ax.add_patch(_frame(float(wds.index(best.weight_decay)), float(lrs.index(best.lr))))
    ax.set_xticks(range(len(wds)), [f"{w:g}" for w in wds])
    ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_xlabel("optimizer.weight_decay")
    ax.set_ylabel("optimizer.lr")


def _frame(x: float, y: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3)


def _scatter(ax, fig, jobs: Sequence[Job], metric: str, best: Job | None) -> None:
    done = [j for j in jobs if j.status == "done" and math.isfinite(j.value(metric))]
    failed = [j for j in jobs if j.status == "failed"]
    if done:
        points = ax.scatter(
            [j.lr for j in done],
            [j.weight_decay for j in done],
            c=[j.value(metric) for j in done],
            cmap="viridis_r",
            s=70,
            edgecolors="black",
        )
        fig.colorbar(points, ax=ax, label=metric)
    if best is not None:
        ax.scatter([best.lr], [best.weight_decay], s=260, facecolors="none", edgecolors="red", linewidths=2.5)
    if failed:
        ax.scatter(
            [j.lr for j in failed], [j.weight_decay for j in failed], marker="x", c="#b00020", s=80, label="failed"
        )
        ax.legend(loc="best")
    ax.set_xscale("log")
    ax.set_xlabel("optimizer.lr (log)")
    ax.set_ylabel("optimizer.weight_decay")


def write_report(sweep_dir: str | Path, metric: str | None = None, out_dir: str | Path | None = None) -> dict:
    """Write the Markdown, CSV and heatmap of a sweep; return paths, the ranked jobs and the best command."""
    sweep_dir = Path(sweep_dir)
    metric = metric or sweep_metric(sweep_dir)
    jobs = read_sweep(sweep_dir)
    out = Path(out_dir) if out_dir else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "sweep_report.md", "csv": out / "sweep_report.csv", "heatmap": out / "sweep_heatmap.png"}
    paths["markdown"].write_text(markdown(jobs, metric, sweep_dir), encoding="utf-8")
    write_csv(jobs, metric, sweep_dir, paths["csv"])
    if not plot_heatmap(jobs, metric, paths["heatmap"]):
        del paths["heatmap"]
    return {"paths": paths, "jobs": rank(jobs, metric), "metric": metric, "best": best_job(jobs, metric)}
