"""Preemption: a real SIGTERM to a real training process → clean exit, last.ckpt, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.utils import instantiate

from recognizer.checkpoint import load_checkpoint
from recognizer.engine.loop import Preempted, preemption_handlers
from tests.conftest import compose_config, tiny_overrides

# Long enough (600 steps) that the signal always lands mid-run; the comparisons stop after a few steps.
SLOW = ("trainer.max_epochs=100", "trainer.num_threads=1")


def step_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_handlers_set_a_flag_and_are_restored() -> None:
    def previous(signum: int, frame: object) -> None:
        raise AssertionError("the previous handler must not run inside the block")

    before = signal.signal(signal.SIGUSR1, previous)
    try:
        with preemption_handlers() as stop:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stop.signum == signal.SIGUSR1
        assert signal.getsignal(signal.SIGUSR1) is previous
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_preempted_message_says_how_to_continue() -> None:
    error = Preempted(signal.SIGTERM, step=7, epoch=1, batch_in_epoch=1)
    assert str(error) == (
        "preempted by SIGTERM at step 7 (epoch 2, batch 1): wrote checkpoints/last.ckpt; "
        "continue with trainer.resume=auto"
    )


def wait_for_steps(metrics: Path, proc: subprocess.Popen, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count('"train/loss"') >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} training steps in {metrics} (exit code {proc.poll()})")


def start_cli(overrides: list[str], run: Path, cwd: Path) -> subprocess.Popen:
    """``recognizer-train`` in its own process, writing to ``run``."""
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    cli = Path(sys.executable).parent / "recognizer-train"
    cmd = [str(cli), *overrides, f"hydra.run.dir={run}", f"paths.output_dir={run}"]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    """Wait for ``proc``; its stderr tail, which a failed assertion shows."""
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return err[-3000:]


@pytest.mark.slow
def test_sigterm_checkpoints_exits_cleanly_and_resumes_exactly(data_root: Path, tmp_path: Path) -> None:
    # All runs are console-script processes (in-process runs may differ in the last float bits).
    overrides = tiny_overrides(data_root, tmp_path, *SLOW)[:-1]  # output dir: set by start_cli
    instantiate(compose_config("train", overrides).data).dataset("train")  # generate the data once
    run, full = tmp_path / "run", tmp_path / "full"
    reference = start_cli([*overrides, "trainer.max_steps=10"], full, tmp_path)  # uninterrupted, meanwhile
    proc = start_cli(overrides, run, tmp_path)
    try:
        wait_for_steps(run / "metrics.jsonl", proc, 2)
    finally:
        proc.send_signal(signal.SIGTERM)
    err = finish(proc)
    assert proc.returncode == 0, err
    logged = (run / "train.log").read_text()
    assert "preempted by SIGTERM at step" in logged and "continue with trainer.resume=auto" in logged
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    step, position = ckpt["step"], (ckpt["epoch"], ckpt["batch_in_epoch"])
    assert 2 <= step < 10 and position == divmod(step, 6)  # 6 batches per epoch
    assert max(step_losses(run)) == step  # every finished step was logged, none after the checkpoint
    resumed = start_cli([*overrides, "trainer.max_steps=10", "trainer.resume=auto"], run, tmp_path)
    err = finish(resumed)
    assert resumed.returncode == 0, err
    assert f"resumed from {run / 'checkpoints' / 'last.ckpt'} at step {step}" in (run / "train.log").read_text()
    err = finish(reference)
    assert reference.returncode == 0, err
    assert step_losses(run) == step_losses(full)  # same per-step losses, bit for bit
    assert sorted(step_losses(run)) == list(range(1, 11))
