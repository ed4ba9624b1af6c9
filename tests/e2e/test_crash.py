"""Crash safety: durable checkpoint writes, and a resume after ``kill -9`` that logs every step once."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from recognizer import files as files_module
from recognizer.checkpoint import load_checkpoint, save_checkpoint
from recognizer.loggers import rewind_jsonl
from tests.conftest import compose_config, tiny_overrides
from tests.e2e.test_preemption import SLOW, finish, start_cli, step_losses


def test_a_checkpoint_is_synced_file_then_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("folder" if os.path.isdir(f"/proc/self/fd/{fd}") else os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(files_module.os, "fsync", fsync)
    path = save_checkpoint({"step": 3}, tmp_path / "ckpt" / "last.ckpt")
    # an unpredictable temporary name, created exclusively: a link planted beside the checkpoint is not written through
    assert len(synced) == 2 and synced[1] == "folder"
    assert re.fullmatch(
        rf"{re.escape(str(tmp_path / 'ckpt'))}/\.last\.ckpt\.{os.getpid()}\.[0-9a-f]{{8}}\.tmp", synced[0]
    )
    assert torch.load(path, weights_only=True) == {"step": 3} and os.listdir(path.parent) == ["last.ckpt"]


def test_a_failed_save_removes_its_temporary_file_and_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    with pytest.raises(Exception, match="lambda"):  # pickling a function fails after the file was opened
        save_checkpoint({"step": 2, "bad": lambda: None}, path)
    assert os.listdir(tmp_path) == ["last.ckpt"] and torch.load(path, weights_only=True) == {"step": 1}


def test_rewind_moves_the_records_after_the_checkpoint_to_a_side_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "train/loss": 1.0 / s} for s in range(1, 6)] + [{"step": 4, "val/cer": 0.5}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "train/lo')  # cut mid-write
    assert rewind_jsonl(metrics, 4) == 2
    assert [json.loads(line) for line in metrics.read_text().splitlines()] == rows[:4] + rows[5:]
    assert (tmp_path / "metrics.cut.jsonl").read_text() == json.dumps(rows[4]) + '\n{"step": 6, "train/lo\n'
    assert "resuming at step 4: moved 2 record(s) of metrics.jsonl written after that checkpoint" in caplog.text
    assert rewind_jsonl(metrics, 4) == 0 and rewind_jsonl(tmp_path / "none.jsonl", 4) == 0  # nothing to cut


def train_rows(run: Path) -> Counter:
    """How many ``train/loss`` records each step has in ``metrics.jsonl``."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return Counter(r["step"] for r in rows if "train/loss" in r)


def stop_after_a_checkpoint(proc, run: Path, timeout: float = 120.0) -> tuple[int, int]:
    """Freeze ``proc`` (SIGSTOP) once ``metrics.jsonl`` holds a step after ``last.ckpt``'s; return both steps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        last = run / "checkpoints" / "last.ckpt"
        if last.is_file() and (run / "metrics.jsonl").is_file():
            proc.send_signal(signal.SIGSTOP)  # nothing moves while we look
            step, logged = load_checkpoint(last)["step"], max(train_rows(run), default=0)
            if logged > step:
                return step, logged
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"no step logged after a checkpoint (exit code {proc.poll()})")


@pytest.mark.slow
def test_kill_9_then_resume_logs_every_step_once_with_the_uninterrupted_losses(data_root: Path, tmp_path: Path) -> None:
    overrides = [*tiny_overrides(data_root, tmp_path, *SLOW)[:-1], "trainer.checkpoint_every_n_steps=4"]
    instantiate(compose_config("train", overrides).data).dataset("train")  # generate the data once
    run, full = tmp_path / "run", tmp_path / "full"
    reference = start_cli([*overrides, "trainer.max_steps=12"], full, tmp_path)  # uninterrupted, meanwhile
    proc = start_cli(overrides, run, tmp_path)
    try:
        step, logged = stop_after_a_checkpoint(proc, run)
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no handler runs, nothing is flushed or saved
        finish(proc)
    assert proc.returncode == -signal.SIGKILL
    assert step % 4 == 0 or step % 6 == 0  # every 4 steps, and at each epoch's validation (6 batches)
    resumed = start_cli([*overrides, "trainer.max_steps=12", "trainer.resume=auto"], run, tmp_path)
    err = finish(resumed)
    assert resumed.returncode == 0, err
    assert f"moved {logged - step} record(s) of metrics.jsonl" in (run / "train.log").read_text()
    err = finish(reference)
    assert reference.returncode == 0, err
    assert train_rows(run) == dict.fromkeys(range(1, 13), 1)  # no step missing, none twice
    assert step_losses(run) == step_losses(full)  # the uninterrupted run's losses from the checkpoint on
    cut = [json.loads(line) for line in (run / "metrics.cut.jsonl").read_text().splitlines() if line.endswith("}")]
    assert {r["step"] for r in cut if "train/loss" in r} == set(range(step + 1, logged + 1))
