"""One run, one directory (issue 21, items 2, 3, 6 and 9): a lock, no fresh run over another run's
checkpoints, a resume refused before anything is written when the config changed what is trained,
Ctrl-C saving the position, and an unwritable run directory reported as such."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from recognizer.checkpoint import CheckpointError, load_checkpoint
from recognizer.engine.rundir import (
    accept_hydra,
    check_fresh,
    hydra_files,
    restore_hydra,
    run_lock,
    training_changes,
)
from recognizer.train import train
from tests.conftest import compose_config, tiny_overrides
from tests.e2e.test_preemption import SLOW, finish, step_losses, wait_for_steps
from tests.unit.test_errors import assert_clean, run_script


def test_training_changes_lists_what_changes_the_training() -> None:
    saved = {"seed": 1, "model": {"rnn_hidden": 64}, "optimizer": {"lr": 1e-3}, "data": {"train": "a.tsv"}}
    saved["trainer"] = {"max_epochs": 2, "grad_clip": 1.0}
    now = json.loads(json.dumps(saved))
    assert training_changes(saved, now) == []
    now["trainer"]["max_epochs"] = 9  # a longer run: the common, legitimate case
    now["data"]["num_workers"] = 4  # loader settings never change what is trained
    now["model"]["new_key"] = 1  # a key the checkpoint lacks: its default is what that run did
    assert training_changes(saved, now) == []
    saved["trainer"]["malloc_mmap_threshold"] = 131072  # the allocator setting's name before trainer.malloc
    now["trainer"]["malloc"] = "fast"
    assert training_changes(saved, now) == []
    now["optimizer"]["lr"] = 3e-4
    now["model"]["rnn_hidden"] = 128
    now["data"]["train"] = "b.tsv"
    assert training_changes(saved, now) == [
        "data.train: 'a.tsv' → 'b.tsv'",
        "model.rnn_hidden: 64 → 128",
        "optimizer.lr: 0.001 → 0.0003",
    ]
    assert training_changes(saved, now, ["optimizer.lr", "data"]) == ["model.rnn_hidden: 64 → 128"]


def test_the_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(dead.stdout)  # a crashed run's lock
    with run_lock(tmp_path):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / ".lock").exists()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    refused_command(tmp_path)
    try:
        (tmp_path / ".lock").write_text(f"{holder.pid}\n")
        with (
            pytest.raises(CheckpointError, match=rf"is in use by another recognizer-train \(pid {holder.pid}, "),
            run_lock(tmp_path),
        ):
            pass
        assert (tmp_path / ".lock").read_text() == f"{holder.pid}\n"  # not taken from the live run
        assert (tmp_path / ".hydra" / "config.yaml").read_text() == "seed: 0\n"  # the live run's config
    finally:
        holder.kill()


def test_an_accepted_run_keeps_its_own_config_files_whatever_a_refused_command_put_back(tmp_path: Path) -> None:
    """The live run read its .hydra files at start; a command refused meanwhile restored the older accepted ones."""
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 3\n")
    own = hydra_files(tmp_path)
    (tmp_path / ".hydra" / "config.yaml").unlink()
    refused_command(tmp_path)
    restore_hydra(tmp_path)  # what the refused command does on its way out
    accept_hydra(tmp_path, own)
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == "seed: 3\n"
    assert (tmp_path / ".hydra" / "accepted" / "config.yaml").read_text() == "seed: 3\n"


def refused_command(run_dir: Path) -> None:
    """A directory whose run accepted ``seed: 0``, with the config files Hydra wrote for a new command over it."""
    (run_dir / ".hydra" / "accepted").mkdir(parents=True)
    (run_dir / ".hydra" / "accepted" / "config.yaml").write_text("seed: 0\n")
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 7\n")


def test_a_fresh_run_refused_over_another_runs_checkpoints_leaves_that_runs_config(tmp_path: Path) -> None:
    refused_command(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"holds another run's checkpoints \(last\.ckpt\)"):
        check_fresh(tmp_path, overwrite=False)
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == "seed: 0\n"


def test_a_fresh_run_never_writes_over_another_run(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(compose_config("train", tiny_overrides(data_root, out, "trainer.max_epochs=1")))
    first = load_checkpoint(out / "checkpoints" / "best.ckpt")
    with pytest.raises(CheckpointError, match=r"holds another run's checkpoints \(best\.ckpt, last\.ckpt\): a new run"):
        train(compose_config("train", tiny_overrides(data_root, out, "trainer.max_epochs=1", "seed=7")))
    assert torch.equal(
        load_checkpoint(out / "checkpoints" / "best.ckpt")["model"]["head.weight"], first["model"]["head.weight"]
    )  # untouched
    train(
        compose_config(
            "train", tiny_overrides(data_root, out, "trainer.max_epochs=1", "seed=7", "trainer.overwrite=true")
        )
    )
    (aside,) = (out / "previous").iterdir()
    assert (aside / "checkpoints" / "best.ckpt").is_file() and (aside / "metrics.jsonl").is_file()
    assert sorted(step_losses(out)) == list(range(1, 7))  # only the new run's steps, once each
    best = load_checkpoint(out / "checkpoints" / "best.ckpt")
    assert best["run_id"] != first["run_id"] and best["config"]["seed"] == 7


def test_a_run_continued_from_another_directory_needs_a_fresh_one_and_reports_that_runs_best(
    data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, other, fresh = tmp_path / "first", tmp_path / "other", tmp_path / "fresh"
    train(compose_config("train", tiny_overrides(data_root, first, "trainer.max_epochs=1")))
    train(compose_config("train", tiny_overrides(data_root, other, "trainer.max_epochs=1", "seed=7")))
    theirs = load_checkpoint(other / "checkpoints" / "last.ckpt")
    resume = f"trainer.resume={first / 'checkpoints' / 'last.ckpt'}"
    with pytest.raises(CheckpointError, match=rf"{other} holds another run's checkpoints \(best\.ckpt, last\.ckpt\)"):
        train(compose_config("train", tiny_overrides(data_root, other, "trainer.max_epochs=1", resume)))
    # refused for its settings, with trainer.overwrite=true: the directory's run is not moved aside first
    with pytest.raises(CheckpointError, match="this command changes 1 setting"):
        overwrite = ["trainer.overwrite=true", "optimizer.lr=0.0003"]
        train(compose_config("train", tiny_overrides(data_root, other, "trainer.max_epochs=1", resume, *overwrite)))
    assert load_checkpoint(other / "checkpoints" / "last.ckpt")["run_id"] == theirs["run_id"]  # untouched
    assert not (other / "previous").exists()
    # continued into a fresh directory with nothing left to train: the first run's best comes along and counts,
    # also for a later resume of this directory (trainer.resume=auto reads only this directory)
    with caplog.at_level("INFO", logger="recognizer.train"):
        metrics = train(compose_config("train", tiny_overrides(data_root, fresh, "trainer.max_epochs=1", resume)))
    adopted = fresh / "checkpoints" / "best.ckpt"
    assert f"final evaluation of {adopted}" in caplog.text
    assert load_checkpoint(adopted)["run_id"] == load_checkpoint(first / "checkpoints" / "best.ckpt")["run_id"]
    assert metrics["val/cer"] == json.loads((first / "metrics.json").read_text())["val/cer"]


def finished_run(data_root: Path, run: Path) -> tuple[Path, str]:
    """A one-epoch run in ``run``, and the override that continues its last checkpoint elsewhere."""
    train(compose_config("train", tiny_overrides(data_root, run, "trainer.max_epochs=1")))
    return run, f"trainer.resume={run / 'checkpoints' / 'last.ckpt'}"


def test_a_continuation_that_stopped_before_its_first_checkpoint_can_be_run_again(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt adopted the best checkpoint, then its data failed: its copy is not another run's."""
    import recognizer.train as train_module

    first, resume = finished_run(data_root, tmp_path / "first")
    fresh = tmp_path / "fresh"

    def failing_build_run(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the data failed")

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "build_run", failing_build_run)
        with pytest.raises(RuntimeError, match="the data failed"):
            train(compose_config("train", tiny_overrides(data_root, fresh, "trainer.max_epochs=1", resume)))
    assert sorted(p.name for p in (fresh / "checkpoints").iterdir()) == ["best.ckpt"]
    metrics = train(compose_config("train", tiny_overrides(data_root, fresh, "trainer.max_epochs=1", resume)))
    assert metrics["val/cer"] == json.loads((first / "metrics.json").read_text())["val/cer"]


def test_a_continued_run_does_not_take_a_best_checkpoint_written_later_than_its_state(
    data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first directory's run went on after the checkpoint continued elsewhere and wrote a later best."""
    first, resume = finished_run(data_root, tmp_path / "first")
    fork = tmp_path / "fork"
    best = first / "checkpoints" / "best.ckpt"
    later = load_checkpoint(best)
    torch.save({**later, "best_metric": later["best_metric"] / 2, "best_epoch": 7}, best)
    with caplog.at_level("INFO", logger="recognizer.train"):
        train(compose_config("train", tiny_overrides(data_root, fork, "trainer.max_epochs=1", resume)))
    assert f"{best} is not the best of the state continued here" in caplog.text
    assert not (fork / "checkpoints" / "best.ckpt").exists()


def test_a_precision_that_resolves_otherwise_on_resume_is_refused_unless_allowed(
    data_root: Path, tmp_path: Path
) -> None:
    """``trainer.precision=auto`` of a checkpoint written on another machine (here: said to be bf16)."""
    run = tmp_path / "run"
    train(compose_config("train", tiny_overrides(data_root, run, "trainer.max_epochs=1")))
    last = run / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(last)
    assert ckpt["precision"] == "32"
    audit = (run / "audit.json").read_bytes()
    torch.save({**ckpt, "precision": "bf16-mixed"}, last)
    resume = ["trainer.max_epochs=2", "trainer.resume=auto"]
    with pytest.raises(CheckpointError) as refused:
        train(compose_config("train", tiny_overrides(data_root, run, *resume)))
    assert "trainer.precision: 'bf16-mixed' → '32 (trainer.precision=auto on cpu)'" in str(refused.value)
    assert "trainer.resume_allow=[trainer.precision]" in str(refused.value)
    assert sorted(step_losses(run)) == list(range(1, 7))  # nothing written: refused before the data is read
    assert (run / "audit.json").read_bytes() == audit
    train(compose_config("train", tiny_overrides(data_root, run, *resume, "trainer.resume_allow=[trainer.precision]")))
    assert sorted(step_losses(run)) == list(range(1, 13))
    assert load_checkpoint(last)["precision"] == "32"


@pytest.mark.slow
def test_resume_with_changed_training_is_refused_before_anything_is_written(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = [*tiny_overrides(data_root, run)[:-1], f"hydra.run.dir={run}", "trainer.max_epochs=1"]
    done = run_script("recognizer-train", *base, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    config = (run / ".hydra" / "config.yaml").read_text()
    metrics = (run / "metrics.jsonl").read_text()
    for change, line in (
        ("model.rnn_hidden=32", "model.rnn_hidden: 64 → 32"),
        ("data.num_train=48", "data.num_train: 96 → 48"),
        ("optimizer.lr=0.0003", "optimizer.lr: 0.001 → 0.0003"),
    ):
        done = run_script("recognizer-train", *base, "trainer.resume=auto", change, cwd=tmp_path)
        assert_clean(
            done,
            6,
            "recognizer-train",
            f"cannot resume from {run / 'checkpoints' / 'last.ckpt'}: this "
            "command changes 1 setting(s) that change the training:",
        )
        assert f"  {line}\n" in done.stderr and "trainer.resume_allow=[" in done.stderr
        assert (run / ".hydra" / "config.yaml").read_text() == config  # put back as the run wrote it
        assert (run / "metrics.jsonl").read_text() == metrics
    # named as intended, and a longer run: accepted
    more = ["trainer.resume=auto", "optimizer.lr=0.0003", "trainer.resume_allow=[optimizer.lr]", "trainer.max_epochs=2"]
    done = run_script("recognizer-train", *base, *more, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(step_losses(run)) == list(range(1, 13))


def start(overrides: list[str], run: Path, cwd: Path) -> subprocess.Popen:
    """``recognizer-train`` in its own session (a terminal's process group: Ctrl-C reaches its workers too)."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    cli = Path(sys.executable).parent / "recognizer-train"
    cmd = [str(cli), *overrides, f"hydra.run.dir={run}"]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


@pytest.mark.slow
def test_ctrl_c_saves_the_step_and_a_second_run_is_locked_out(data_root: Path, tmp_path: Path) -> None:
    # 6,000 steps: still running when the second command has started and been refused (Ctrl-C stops it)
    overrides = [*tiny_overrides(data_root, tmp_path)[:-1], *SLOW, "trainer.max_epochs=1000", "data.num_workers=1"]
    instantiate(compose_config("train", overrides).data).dataset("train")  # generate the data once
    run = tmp_path / "run"
    proc = start(overrides, run, tmp_path)
    try:
        wait_for_steps(run / "metrics.jsonl", proc, 2, timeout=300)
        second = run_script("recognizer-train", *overrides, f"hydra.run.dir={run}", cwd=tmp_path)
        assert_clean(second, 6, "recognizer-train", f"{run} is in use by another recognizer-train (pid {proc.pid}, ")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group, workers too
    err = finish(proc)
    assert proc.returncode == 130, err
    assert "Ctrl-C: finishing this step, then writing last.ckpt" in err
    assert "to continue: recognizer-train " in err and f"hydra.run.dir={run} trainer.resume=auto" in err
    assert "interrupted by Ctrl-C (SIGINT) at step" in (run / "train.log").read_text()
    assert not (run / ".lock").exists()
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    step = ckpt["step"]
    # the position (6 batches an epoch): a Ctrl-C during an epoch's last step saves (epoch, 6), and the resume
    # then runs that epoch's end (validation) as the uninterrupted run would; during validation, (epoch + 1, 0)
    assert step >= 2 and 6 * ckpt["epoch"] + ckpt["batch_in_epoch"] == step and 0 <= ckpt["batch_in_epoch"] <= 6
    resumed = start([*overrides, f"trainer.max_steps={step + 4}", "trainer.resume=auto"], run, tmp_path)
    err = finish(resumed)
    assert resumed.returncode == 0, err
    assert f"resumed from {run / 'checkpoints' / 'last.ckpt'} at step {step}" in (run / "train.log").read_text()
    assert sorted(step_losses(run)) == list(range(1, step + 5))  # every step once: none lost, none twice


@pytest.mark.slow
def test_an_unwritable_run_directory_is_a_file_system_error(data_root: Path, tmp_path: Path) -> None:
    overrides = [*tiny_overrides(data_root, tmp_path)[:-1], "trainer.max_epochs=1"]
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    done = run_script("recognizer-train", *overrides, f"hydra.run.dir={blocker / 'run'}", cwd=tmp_path)
    assert_clean(done, 7, "recognizer-train", "not a directory. Check the folder's permissions and free space")
    run = tmp_path / "run"  # a full disk: the run's audit file is /dev/full (every write: ENOSPC)
    done = run_script("recognizer-train", *overrides, f"hydra.run.dir={run}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    (run / "audit.json").unlink()
    (run / "audit.json").symlink_to("/dev/full")
    more = ("trainer.resume=auto", "trainer.max_epochs=2")
    done = run_script("recognizer-train", *overrides, *more, f"hydra.run.dir={run}", cwd=tmp_path)
    assert_clean(done, 7, "recognizer-train", "no space left on device. Check the folder's permissions")
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["step"] == last["step"]  # nothing lost
