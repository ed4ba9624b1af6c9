"""Sweeps: the grid and Optuna configs, divergence inside a sweep, the launchers, wandb groups, the report."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from recognizer import CONFIG_DIR
from recognizer import sweep_report as report_module
from recognizer.cli.sweep_report import main
from recognizer.cli.train import main as train_main
from recognizer.stability.guard import NonFiniteGuard, NonFiniteStepError
from recognizer.sweep_report import best_command, read_sweep, write_report
from recognizer.sweeps import DIVERGED_METRIC, record_failure, sweep_group
from tests.conftest import compose_config

GRID_LRS = ["0.001", "0.0003", "0.0001"]  # as Hydra writes them into job overrides
GRID_WDS = ["0.01", "0.03", "0.1"]
NEEDS_SWEEP = "the sweep plugins are not installed: pip install -e .[sweep]"


# --- configs ---------------------------------------------------------------------------------------


def compose_with_hydra(overrides: list[str]) -> DictConfig:
    """The train config with its ``hydra`` node (sweeper, launcher), as a ``-m`` run composes it."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", [*overrides, "paths.output_dir=unused"], return_hydra_config=True)


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes from a composed config's params and command-line overrides."""
    cfg = compose_with_hydra([o for o in overrides if o.startswith("hparams_search=")])
    params = [f"{k}={v}" for k, v in OmegaConf.to_container(cfg.hydra.sweeper.params).items()]
    sweep_args = [o for o in overrides if not o.startswith("hparams_search=")]
    parsed = OverridesParser.create().parse_overrides(params + sweep_args)
    return BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]


def test_lr_wd_grid_is_nine_jobs() -> None:
    jobs = sweep_jobs(["hparams_search=lr_wd_grid"])
    expected = [[f"optimizer.lr={lr}", f"optimizer.weight_decay={wd}"] for lr in GRID_LRS for wd in GRID_WDS]
    assert jobs == expected


def test_command_line_values_replace_a_grid_axis() -> None:
    jobs = sweep_jobs(["hparams_search=lr_wd_grid", "optimizer.lr=1e-3,10"])
    assert jobs == [[f"optimizer.lr={lr}", f"optimizer.weight_decay={wd}"] for lr in ("0.001", "10") for wd in GRID_WDS]


def test_optuna_search_space_and_storage() -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason=NEEDS_SWEEP)
    cfg = compose_with_hydra(["hparams_search=optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.direction == "minimize" and cfg.optimized_metric == "val/cer"
    assert sweeper.params["optimizer.lr"] == "tag(log, interval(3e-5, 3e-3))"
    assert sweeper.params["optimizer.weight_decay"] == "interval(0.0, 0.2)"
    assert OmegaConf.to_container(sweeper)["storage"] == "sqlite:///${hydra.sweep.dir}/optuna.db"


def test_slurm_launcher_extends_the_plugin() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason=NEEDS_SWEEP)
    launcher = compose_with_hydra(["hydra/launcher=slurm"]).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.timeout_min) == (1, 1, 240)
    assert launcher.signal_delay_s == 120  # a plugin default that the file does not restate


def test_wandb_group_is_null_outside_a_sweep(tmp_path: Path) -> None:
    cfg = compose_config("train", ["logger=wandb", f"paths.output_dir={tmp_path}"])
    assert cfg.logger.wandb.group is None  # the compose API has no Hydra runtime: no error either
    assert sweep_group() is None


# --- divergence --------------------------------------------------------------------------------------


def nonfinite_error(step: int) -> NonFiniteStepError:
    guard = NonFiniteGuard("raise")
    with pytest.raises(NonFiniteStepError) as info:
        guard.check(step, math.nan, math.nan, torch.tensor([math.nan, 1.0]), ["a.png", "b.png"])
    return info.value


def test_record_failure_names_cause_and_step(tmp_path: Path) -> None:
    failure = record_failure(nonfinite_error(37), tmp_path)
    written = json.loads((tmp_path / "failure.json").read_text())
    assert written == failure
    assert (written["status"], written["type"], written["step"]) == ("diverged", "NonFiniteStepError", 37)
    assert written["message"].startswith("non-finite step 37: loss=nan, grad_norm=nan: non-finite loss in samples")
    assert math.isinf(DIVERGED_METRIC) and DIVERGED_METRIC > 0  # ranks last when minimising


# --- the report on a hand-made sweep directory ------------------------------------------------------


def make_job(sweep: Path, lr: float, wd: float, *, cer: float | None = None, diverged_at: int | None = None) -> Path:
    """A job folder as Hydra and recognizer-train leave it: done, diverged, or still running."""
    overrides = ["experiment=htr_digits_crnn", "hparams_search=lr_wd_grid", f"optimizer.lr={lr}"]
    overrides += [f"optimizer.weight_decay={wd}", "trainer.max_epochs=2"]
    job = sweep / ",".join(o for o in overrides if not o.startswith(("experiment", "hparams_search")))
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"optimizer": {"lr": lr, "weight_decay": wd}}), job / ".hydra" / "config.yaml")
    if diverged_at is not None:
        record_failure(nonfinite_error(diverged_at), job)
    elif cer is not None:
        metrics = {"val/cer": cer, "val/wer": 2 * cer, "val/loss": 1.0, "train/steps": 626, "train/time": 61.4}
        (job / "metrics.json").write_text(json.dumps(metrics))
    else:  # running: two validations so far, the second line cut mid-write
        (job / "metrics.jsonl").write_text('{"step": 10, "train/loss": 3.0}\n{"step": 313, "val/cer": 0.5}\n{"ste')
    return job


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sweep = tmp_path_factory.mktemp("multiruns") / "2026-01-01_00-00-00"
    make_job(sweep, 1e-3, 0.01, cer=0.03)
    make_job(sweep, 1e-3, 0.1, cer=0.02)
    make_job(sweep, 1e-4, 0.01, cer=0.2)
    make_job(sweep, 1e-4, 0.1)  # unfinished
    make_job(sweep, 1000.0, 0.01, diverged_at=9)
    make_job(sweep, 1000.0, 0.1, diverged_at=7)
    OmegaConf.save(OmegaConf.create({"optimized_metric": "val/cer"}), sweep / "multirun.yaml")
    return sweep


@pytest.fixture(scope="module")
def report(sweep_dir: Path) -> dict:
    return write_report(sweep_dir)


def test_report_ranks_finished_then_unfinished_then_failed(report: dict) -> None:
    ranked = [(j.status, j.lr, j.weight_decay) for j in report["jobs"]]
    assert ranked == [
        ("done", 1e-3, 0.1),
        ("done", 1e-3, 0.01),
        ("done", 1e-4, 0.01),
        ("unfinished", 1e-4, 0.1),
        ("failed", 1000.0, 0.01),
        ("failed", 1000.0, 0.1),
    ]
    unfinished = report["jobs"][3]
    assert unfinished.metrics == {"val/cer": 0.5, "train/steps": 313}
    assert unfinished.cause == "running or stopped; last validation at step 313"
    assert report["jobs"][4].cause.startswith("diverged at step 9: NonFiniteStepError: non-finite step 9: loss=nan")


def test_report_files(report: dict) -> None:
    md = report["paths"]["markdown"].read_text()
    assert "6 jobs: 3 done, 2 failed, 1 unfinished. Sorted by `val/cer` (lower is better), ties by `val/loss`" in md
    assert "Common overrides: `experiment=htr_digits_crnn hparams_search=lr_wd_grid trainer.max_epochs=2`" in md
    assert "| rank | status | optimizer.lr | optimizer.weight_decay | val/cer | val/wer | val/loss |" in md
    assert "| 1 | done | 0.001 | 0.1 | 0.0200 | 0.0400 | 1.0000 | 626 | 61 |  |" in md
    assert "| 5 | failed | 1000.0 | 0.01 |  |  |  |  |  | diverged at step 9: NonFiniteStepError: non-finite" in md
    rows = report["paths"]["csv"].read_text().splitlines()
    assert rows[0].startswith("rank,status,optimizer.lr,optimizer.weight_decay,val/cer,")
    assert rows[0].endswith(",cause,job,overrides") and len(rows) == 7
    assert rows[6].startswith("6,failed,1000.0,0.1,")
    assert report["paths"]["heatmap"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    expected = (
        "recognizer-train experiment=htr_digits_crnn optimizer.lr=0.001 optimizer.weight_decay=0.1 trainer.max_epochs=2"
    )
    assert best_command(report["best"]) == expected
    assert md.endswith(f"```bash\n{expected}\n```\n")


def test_report_cli_prints_the_best_command(sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(sweep_dir), "--metric", "val/wer", "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert (
        out.splitlines()[-2]
        == "best: optimizer.lr=0.001,optimizer.weight_decay=0.1,trainer.max_epochs=2 val/wer=0.0400"
    )
    assert out.splitlines()[-1].startswith("recognizer-train experiment=htr_digits_crnn optimizer.lr=0.001")
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "sweep_heatmap.png",
        "sweep_report.csv",
        "sweep_report.md",
    ]


def test_report_of_a_sweep_where_nothing_finished(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_job(tmp_path, 1e-3, 0.01)
    make_job(tmp_path, 1000.0, 0.01, diverged_at=3)
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "best: none yet (no job has finished)"


def test_report_names_a_wrong_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope")])
    assert exit_info.value.code == 3  # a data error (recognizer.errors)
    assert capsys.readouterr().err == (
        f"recognizer-sweep-report: error: sweep directory {tmp_path / 'nope'} does not exist\n"
        "(data error, exit code 3; HYDRA_FULL_ERROR=1 shows the traceback)\n"
    )
    with pytest.raises(FileNotFoundError, match=r"no jobs in .*: expected folders with \.hydra/overrides\.yaml"):
        read_sweep(tmp_path)


def test_samples_of_a_random_search_are_a_scatter(tmp_path: Path) -> None:
    for i in range(14):
        make_job(tmp_path, 1e-4 * (1.3**i), 0.01 * (i % 7 + 1) + 1e-3 * i, cer=0.1 / (i + 1))
    report = write_report(tmp_path)
    assert report["paths"]["heatmap"].stat().st_size > 10_000
    assert report["best"].metrics["val/cer"] == pytest.approx(0.1 / 14)


# --- real sweeps through the console script ---------------------------------------------------------

TINY = [  # the data sizes of tests/conftest.py (its generated set is reused): 6 steps per job
    "data.num_train=96",
    "data.num_val=24",
    "data.num_test=24",
    "data.batch_size=16",
    "trainer.max_epochs=1",
    "scheduler.warmup_steps=2",
]  # short: a job's folder name holds its overrides and must stay under 255 characters
DIVERGING_LR = "1e6"  # with 2 warmup steps the tiny run's gradient goes non-finite within 3 steps


def run_sweep(tmp_path: Path, data_root: Path, *args: str) -> subprocess.CompletedProcess:
    """``recognizer-train -m`` in ``tmp_path`` (the embedded data linked in, so no path is an override)."""
    (data_root / "digit_lines").mkdir(parents=True, exist_ok=True)
    (tmp_path / "data").mkdir(exist_ok=True)
    link = tmp_path / "data" / "digit_lines"
    if not link.exists():
        link.symlink_to(data_root / "digit_lines", target_is_directory=True)
    env = os.environ | {"WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).parent / "recognizer-train"), "-m", *TINY, *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def job_dirs(sweep: Path) -> dict[str, Path]:
    return {p.parent.parent.name: p.parent.parent for p in sweep.glob("*/.hydra/overrides.yaml")}


@pytest.mark.slow
def test_grid_sweep_on_submitit_goes_on_past_a_diverging_job(tmp_path: Path, data_root: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason=NEEDS_SWEEP)
    sweep = tmp_path / "grid"
    grid = ["hparams_search=lr_wd_grid", f"optimizer.lr={DIVERGING_LR},1e-3", "optimizer.weight_decay=0.01"]
    done = run_sweep(tmp_path, data_root, *grid, "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((sweep / ".submitit").iterdir())  # submitit's job folders and logs
    jobs = job_dirs(sweep)
    common = "data.batch_size=16,data.num_test=24,data.num_train=96,data.num_val=24"
    tail = "scheduler.warmup_steps=2,trainer.max_epochs=1"
    diverged, healthy = (
        f"{common},optimizer.lr={lr},optimizer.weight_decay=0.01,{tail}" for lr in ("1000000.0", "0.001")
    )
    assert sorted(jobs) == [healthy, diverged]  # one directory per job, named by its overrides
    failure = json.loads((jobs[diverged] / "failure.json").read_text())
    assert failure["type"] == "NonFiniteStepError" and 1 <= failure["step"] <= 6
    assert failure["message"].startswith(f"non-finite step {failure['step']}: loss=")
    assert not (jobs[diverged] / "metrics.json").exists()
    assert json.loads((jobs[healthy] / "metrics.json").read_text())["train/steps"] == 6
    report = write_report(sweep)
    assert [(j.status, j.lr) for j in report["jobs"]] == [("done", 1e-3), ("failed", 1e6)]
    assert report["jobs"][1].cause.startswith(f"diverged at step {failure['step']}: NonFiniteStepError: non-finite")
    program, *overrides = best_command(report["best"]).split()  # the sweep choice left out
    assert program == "recognizer-train"
    assert sorted(overrides) == sorted([*TINY, "optimizer.lr=0.001", "optimizer.weight_decay=0.01"])


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of an offline run's ``run-*.wandb`` file (LevelDB log format: 32 KiB
    blocks of chunks, each with a 7-byte header: CRC32, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4)."""
    from wandb.proto import wandb_internal_pb2

    raw, pos, pending = path.read_bytes(), 7, b""
    assert raw[:4] == b":W&B", f"{path} is not a wandb run file"
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # too little room left in the block for a header: padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if kind == 0:
            break
        pending, pos = pending + raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_run(job: Path) -> dict[str, Any]:
    """Group, config keys and last logged value of each metric of a job's offline wandb run."""
    [run_file] = (job / "wandb").glob("offline-run-*/run-*.wandb")
    for _ in range(50):  # wandb's service process may still be writing after the job ended
        records = list(wandb_records(run_file))
        if records and records[-1].WhichOneof("record_type") == "exit":
            break
        time.sleep(0.2)
    run: dict[str, Any] = {"group": None, "config": set(), "last": {}}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["group"] = record.run.run_group
        elif kind == "config":
            run["config"] |= {item.key or item.nested_key[0] for item in record.config.update}
        elif kind == "history":
            items = record.history.item
            run["last"] |= {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}
    return run


@pytest.mark.slow
def test_optuna_resumes_its_study_and_runs_trials_on_joblib_with_wandb(tmp_path: Path, data_root: Path) -> None:
    """A study already in <sweep dir>/optuna.db gains two trials, run in parallel (joblib), logged offline to
    one wandb group."""
    optuna = pytest.importorskip("optuna", reason=NEEDS_SWEEP)
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason=NEEDS_SWEEP)
    sweep, storage = tmp_path / "optuna", f"sqlite:///{tmp_path}/optuna/optuna.db"
    sweep.mkdir()
    earlier = optuna.create_study(study_name="lr_wd", storage=storage)  # as an interrupted sweep leaves it
    space = {
        "optimizer.lr": optuna.distributions.LogUniformDistribution(3e-5, 3e-3),
        "optimizer.weight_decay": optuna.distributions.UniformDistribution(0.0, 0.2),
    }
    earlier.tell(earlier.ask(space), 0.5)
    args = ["hparams_search=optuna", f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2"]
    args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "logger=wandb", "logger.wandb.mode=offline"]
    done = run_sweep(tmp_path, data_root, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="lr_wd", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert all(3e-5 <= t.params["optimizer.lr"] <= 3e-3 for t in study.trials)
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(min(t.value for t in study.trials))
    jobs = job_dirs(sweep)
    assert len(jobs) == 2  # one folder per new trial, named by its sampled values
    for job in jobs.values():
        run = wandb_run(job)
        assert run["group"] == str(sweep)  # every job of the sweep: the sweep directory
        assert {"optimizer", "trainer", "data", "model"} <= run["config"]
        final = json.loads((job / "metrics.json").read_text())
        assert run["last"]["test/cer"] == pytest.approx(final["test/cer"])


@pytest.mark.slow
def test_a_single_run_that_diverges_still_fails_loudly(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "single"
    args = [f"data.root={data_root}/digit_lines", *TINY, f"optimizer.lr={DIVERGING_LR}", f"hydra.run.dir={run_dir}"]
    monkeypatch.setattr(sys, "argv", ["recognizer-train", *args])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # Hydra re-raises instead of printing and exiting
    with pytest.raises(NonFiniteStepError, match=r"^non-finite step \d+: loss="):
        train_main()
    assert not (run_dir / "failure.json").exists()  # only sweeps turn divergence into a ranked result


def test_tied_jobs_rank_by_val_loss_then_job_number_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Every job still at val CER 1.0 (blank collapse early on): the tie-break decides, the same everywhere.
    val_losses = {(1e-3, 0.01): 3.1, (1e-3, 0.1): 2.9, (1000.0, 0.01): 1054.0, (1000.0, 0.1): 2.9}
    for num, ((lr, wd), loss) in enumerate(val_losses.items()):
        job = make_job(tmp_path, lr, wd, cer=1.0)
        metrics = json.loads((job / "metrics.json").read_text()) | {"val/loss": loss}
        (job / "metrics.json").write_text(json.dumps(metrics))
        OmegaConf.save(OmegaConf.create({"hydra": {"job": {"num": num}}}), job / ".hydra" / "hydra.yaml")
    frames = []
    original = report_module._frame
    monkeypatch.setattr(report_module, "_frame", lambda x, y: frames.append((x, y)) or original(x, y))
    report = write_report(tmp_path)
    # val/loss 2.9 twice: the lower job number (1: lr 1e-3, wd 0.1) wins; lr 1000's loss of 1054 ranks last
    ranked = [(j.lr, j.weight_decay) for j in report["jobs"]]
    assert ranked == [(1e-3, 0.1), (1000.0, 0.1), (1e-3, 0.01), (1000.0, 0.01)]
    assert (report["best"].lr, report["best"].weight_decay) == (1e-3, 0.1)
    assert frames == [(1.0, 1.0)]  # the heatmap frames column wd 0.1, row lr 1e-3 (rows: lr 1000, 1e-3)
    md = report["paths"]["markdown"].read_text()
    assert "Sorted by `val/cer` (lower is better), ties by `val/loss`, then by job number." in md
    assert "| 1 | done | 0.001 | 0.1 | 1.0000 |" in md
    assert md.endswith("optimizer.lr=0.001 optimizer.weight_decay=0.1 trainer.max_epochs=2\n```\n")
    assert main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    assert capsys.readouterr().out.splitlines()[-2].startswith("best: optimizer.lr=0.001,optimizer.weight_decay=0.1,")


def test_a_job_with_a_nan_metric_ranks_after_every_finite_one() -> None:
    """``optimized_metric=val/loss`` and a NaN loss: NaN sorts nowhere, so it would take any place, even the first."""
    jobs = [
        report_module.Job(Path(f"multirun/{i}"), [f"optimizer.lr={lr}"], "done", {"val/loss": loss}, num=i)
        for i, (lr, loss) in enumerate([(1e-3, math.nan), (3e-4, 0.8), (1e-4, 0.9)])
    ]
    assert [job.num for job in report_module.rank(jobs, "val/loss")] == [1, 2, 0]
    best = report_module.best_job(jobs, "val/loss")
    assert best is not None and best.num == 1


def test_a_job_whose_rollbacks_ran_out_on_divergence_names_its_step(tmp_path: Path) -> None:
    error = NonFiniteStepError("training diverged at step 412: the train loss has stayed above 4 × its best")
    assert record_failure(error, tmp_path)["step"] == 412
    assert json.loads((tmp_path / "failure.json").read_text())["step"] == 412
