"""DDP: sharded samplers, agreed decisions across ranks, and real ``torchrun`` runs on CPU with gloo."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from recognizer.checkpoint import load_checkpoint
from recognizer.ctc import CTCLoss
from recognizer.data.batching import BucketBatchSampler, EpochBatchSampler
from recognizer.engine import distributed
from recognizer.engine.distributed import Dist
from recognizer.engine.loop import train_step
from recognizer.evaluate import evaluate_checkpoint
from recognizer.stability.guard import NonFiniteStepError
from recognizer.train import check_world_size, train
from tests.conftest import compose_config, tiny_overrides
from tests.unit.engine.test_loop import make_batch, make_state

# --- samplers --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [96, 100, 7])
@pytest.mark.parametrize("bucketing", [False, True])
def test_training_shards_are_disjoint_equal_and_cover_the_epoch(n: int, bucketing: bool) -> None:
    def sampler(rank: int) -> EpochBatchSampler:
        if bucketing:
            widths = [(i * 37) % 50 + 10 for i in range(n)]
            return BucketBatchSampler(range(n), widths, 16, shuffle=True, seed=3, num_replicas=2, rank=rank)
        return EpochBatchSampler(range(n), 16, shuffle=True, seed=3, num_replicas=2, rank=rank)

    single = EpochBatchSampler(range(n), 16, shuffle=True, seed=3)
    shards = [list(sampler(r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(sampler(0)) == -(-len(single) // 2)
    seen = [i for shard in shards for b in shard for i in b]
    assert set(seen) == set(range(n))  # every sample trained on
    padded = len(shards[0]) * 2 - len(single)  # batches repeated to even out the shards
    assert len(seen) - n <= padded * 16
    if not padded:
        assert len(seen) == n  # no sample twice


def test_evaluation_shards_count_every_sample_once() -> None:
    def shard(rank: int) -> EpochBatchSampler:
        return EpochBatchSampler(range(70), 16, shuffle=False, num_replicas=2, rank=rank, pad_shards=False)

    shards = [list(shard(r)) for r in (0, 1)]
    assert [len(s) for s in shards] == [3, 2]
    assert sorted(i for s in shards for b in s for i in b) == list(range(70))
    assert len(shard(1)) == 2


def test_shards_resume_mid_epoch() -> None:
    full = list(EpochBatchSampler(range(100), 8, shuffle=True, seed=1, num_replicas=2, rank=1))
    resumed = EpochBatchSampler(range(100), 8, shuffle=True, seed=1, num_replicas=2, rank=1)
    resumed.set_epoch(0, start_batch=3)
    assert list(resumed) == full[3:] and len(resumed) == len(full) - 3


def test_rank_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"rank must be in 0\.\.1 for num_replicas=2, got 2"):
        EpochBatchSampler(range(10), 2, shuffle=False, num_replicas=2, rank=2)


def test_a_single_process_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = distributed.init_distributed("cpu")
    assert dist == Dist() and not dist.enabled and dist.is_main
    assert dist.any(True) and not dist.any(False) and dist.sum([1.0, 2.0]) == [1.0, 2.0]
    assert dist.broadcast("x") == "x" and dist.gather(3) == [3]
    assert not torch_dist.is_initialized()


def test_a_gpu_index_under_torchrun_and_a_bad_timeout_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match=r"trainer.device=cuda:1 under torchrun: each process uses GPU LOCAL_RANK"):
        distributed.init_distributed("cuda:1")
    with pytest.raises(ValueError, match=r"trainer.dist_timeout_s must be > 0 seconds, got 0"):
        distributed.init_distributed("cpu", timeout_s=0)
    assert not torch_dist.is_initialized()


def test_other_ranks_log_warnings_only_marked_with_their_rank() -> None:
    import io
    import logging

    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    streams = [io.StringIO(), io.StringIO()]  # e.g. Hydra's console and train.log handlers
    root.handlers = [logging.StreamHandler(s) for s in streams]
    try:
        distributed.quiet_other_ranks(Dist(rank=1, world_size=2))
        logging.getLogger("recognizer.x").info("progress")
        logging.getLogger("recognizer.x").warning("non-finite step %d", 3)
        assert [s.getvalue() for s in streams] == ["[rank 1] non-finite step 3\n"] * 2
    finally:
        root.handlers, root.level = handlers, level


@pytest.mark.parametrize(
    ("ckpt", "saved"),
    [({"world_size": 2}, 2), ({"rng_per_rank": [{}, {}, {}]}, 3), ({"rng": {}}, 1)],  # older ones lack world_size
)
def test_resume_with_another_number_of_processes_is_refused(ckpt: dict, saved: int) -> None:
    check_world_size(ckpt, saved, Path("last.ckpt"))  # the same number: fine
    with pytest.raises(ValueError) as error:
        check_world_size(ckpt, saved + 1, Path("run/last.ckpt"))
    assert str(error.value).startswith(
        f"cannot resume from run/last.ckpt: it was written by {saved} process(es), this run has {saved + 1}. "
    )
    assert f"resume with {saved} process(es) in total (nodes × torchrun --nproc_per_node" in str(error.value)


# --- two processes with gloo (torch.multiprocessing) ----------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, port: int) -> Dist:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    return distributed.init_distributed("cpu", timeout_s=60)


def _ddp_state(dist: Dist, policy: str):
    """The same weights on every rank (same seed); rank 1's model turns sample 1 into NaN."""
    state = make_state(policy, poison=dist.rank == 1)
    state.dist = dist
    state.train_forward = distributed.wrap(state.model, dist, torch.device("cpu"))
    return state


def _write_error_and_leave(dist: Dist, out: str, fn, error_type: type[Exception]) -> None:
    """Run ``fn``; write the ``error_type`` message it raised (or "") to ``out/rankN.txt``; leave the group."""
    try:
        fn()
        message = ""
    except error_type as e:
        message = str(e)
    (Path(out) / f"rank{dist.rank}.txt").write_text(message)
    dist.barrier()
    distributed.shutdown(dist)


def _nonfinite_on_one_rank(rank: int, port: int, out: str) -> None:
    dist = _join(rank, port)
    state = _ddp_state(dist, "skip")
    before = [p.detach().clone() for p in state.model.parameters()]
    result = train_step(state, make_batch([[1, 2], [3, 4]]), CTCLoss(), grad_clip=1.0)
    if rank == 1:
        state.model.head = state.model.head[1]  # healthy again
    unchanged = all(torch.equal(a, p) for a, p in zip(before, state.model.parameters()))
    healthy = train_step(state, make_batch([[1, 2], [3, 4]]), CTCLoss(), grad_clip=1.0)
    compared = distributed.check_same_parameters(state.model, dist)
    torch.save(
        {
            "applied": result.applied,
            "unchanged": unchanged,
            "message": state.guard.last_message,
            "healthy_applied": healthy.applied,
            "compared": compared,
            "skipped": state.guard.skipped,
        },
        Path(out) / f"rank{rank}.pt",
    )
    dist.barrier()
    distributed.shutdown(dist)


def _raise_on_one_rank(rank: int, port: int, out: str) -> None:
    dist = _join(rank, port)
    state = _ddp_state(dist, "raise")
    batch = make_batch([[1, 2], [3, 4]])
    _write_error_and_leave(dist, out, lambda: train_step(state, batch, CTCLoss(), grad_clip=1.0), NonFiniteStepError)


def _desync(rank: int, port: int, out: str) -> None:
    dist = _join(rank, port)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)  # same bias on both ranks; the 6 weights differ
    with torch.no_grad():
        model.weight.fill_(float(rank))
    _write_error_and_leave(dist, out, lambda: distributed.check_same_parameters(model, dist), RuntimeError)


def _divergence_on_mean_loss(rank: int, port: int, out: str) -> None:
    from recognizer.stability.divergence import DivergenceMonitor
    from recognizer.stability.monitors import StabilityMonitors

    dist = _join(rank, port)
    state = _ddp_state(dist, "raise")
    state.model.head = state.model.head[1] if rank == 1 else state.model.head  # no poison here
    monitors = StabilityMonitors(divergence=DivergenceMonitor(window=10))
    state.callbacks.append(monitors)
    local = []
    for _ in range(3):  # each rank its own labels: different local losses
        targets = [[1, 2], [3, 4]] if rank == 0 else [[4, 3, 2, 1], [1, 1, 2, 2]]
        local.append(train_step(state, make_batch(targets, width=32), CTCLoss(), grad_clip=1.0).loss)
    torch.save({"local": local, "window": list(monitors.divergence.losses)}, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    distributed.shutdown(dist)


def test_divergence_is_judged_on_the_mean_loss_of_all_ranks(tmp_path: Path) -> None:
    """Each rank's monitor sees the same (mean) loss, so every rank flags and rolls back at the same step."""
    mp.spawn(_divergence_on_mean_loss, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["local"] != r1["local"]
    assert r0["window"] == r1["window"] == pytest.approx([(a + b) / 2 for a, b in zip(r0["local"], r1["local"])])


def test_a_nonfinite_step_on_one_rank_is_skipped_on_all(tmp_path: Path) -> None:
    mp.spawn(_nonfinite_on_one_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for r in (r0, r1):  # both ranks skipped together, weights untouched, then trained on together
        assert not r["applied"] and r["unchanged"] and r["healthy_applied"] and r["skipped"] == 1
        assert r["compared"] == sum(p.numel() for p in make_state().model.parameters())
    assert "non-finite loss in samples ['line-1']" in r1["message"]
    assert "non-finite step 1 on another rank" in r0["message"]


def test_raise_policy_fails_every_rank_with_the_faulty_ranks_diagnosis(tmp_path: Path) -> None:
    mp.spawn(_raise_on_one_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert messages[0] == messages[1]  # the healthy rank 0 reports rank 1's samples, not "another rank"
    assert messages[0] == (
        "rank 1: non-finite step 1: loss=nan, grad_norm=nan: non-finite loss in samples ['line-1'] "
        "(stability.nonfinite_policy=raise)"
    )


def test_ranks_out_of_step_are_detected(tmp_path: Path) -> None:
    mp.spawn(_desync, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for r in (0, 1):
        message = (tmp_path / f"rank{r}.txt").read_text()
        assert "parameters differ across the 2 ranks (6 values differ from rank 0's)" in message


# --- the real command under torchrun ---------------------------------------------------------


def torchrun(overrides: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "recognizer.cli.train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run([*cmd, *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def step_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def ddp_overrides(data_root: Path, run: Path, *extra: str) -> list[str]:
    base = [o for o in tiny_overrides(data_root, run) if not o.startswith("paths.output_dir")]
    return [*base, f"hydra.run.dir={run}", *extra]


def test_torchrun_two_processes_train_one_run(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    done = torchrun(ddp_overrides(data_root, run), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "parameters identical on all 2 ranks" in done.stdout  # Hydra logs to stdout
    assert "2 ranks joined (gloo)" in done.stdout and "[rank 1]" not in done.stdout  # rank 1 had nothing to say
    assert len([line for line in done.stdout.splitlines() if line.startswith("val/cer=")]) == 1  # rank 0 only
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not list(run.glob("rank*"))  # the other rank wrote nothing
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    # 96 samples / batch 16 = 6 batches per epoch, 3 per rank: 2 epochs = 6 steps of 2 × 16 samples
    assert ckpt["step"] == 6 and ckpt["world_size"] == 2 and len(ckpt["rng_per_rank"]) == 2
    assert sorted(step_losses(run)) == [1, 2, 3, 4, 5, 6]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train/steps"] == 6 and "test/cer" in metrics

    # Validation ran on a shard per rank with the counts summed: it must equal one process scoring
    # the saved weights and BatchNorm statistics (before sync_buffers, rank 1 used its own statistics).
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last_val = [r for r in rows if "val/loss" in r and "epoch" in r][-1]  # the epoch-2 validation
    data = [o for o in tiny_overrides(data_root, run) if o.startswith("data.") and "batch_size" not in o]
    scoring = [f"checkpoint={run}/checkpoints/last.ckpt", *data, "split=val", "device=cpu", f"paths.output_dir={run}/e"]
    single = evaluate_checkpoint(compose_config("eval", scoring))
    assert last_val["step"] == 6 and single["val/cer"] == last_val["val/cer"]
    assert single["val/loss"] == pytest.approx(last_val["val/loss"], rel=1e-6)

    # Interrupted after 2 steps (mid-epoch) and resumed: the same losses as the uninterrupted run.
    parts = tmp_path / "parts"
    first = torchrun(ddp_overrides(data_root, parts, "trainer.max_steps=2"), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(ddp_overrides(data_root, parts, "trainer.resume=auto"), tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert step_losses(parts) == step_losses(run)

    # One process cannot continue what two started: its epochs have twice the steps (the LR schedule too).
    with pytest.raises(ValueError, match=r"it was written by 2 process\(es\), this run has 1"):
        train(compose_config("train", [*tiny_overrides(data_root, parts), "trainer.resume=auto"]))


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_all_ranks_at_one_step_and_resumes_exactly(data_root: Path, tmp_path: Path) -> None:
    """SIGTERM to torchrun (it forwards the signal to every rank): one agreed step, one last.ckpt."""
    slow = ["trainer.max_epochs=100", "trainer.num_threads=1"]  # long enough for the signal to land mid-run
    reference = torchrun(ddp_overrides(data_root, tmp_path / "full", *slow, "trainer.max_steps=8"), tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "recognizer.cli.train", *ddp_overrides(data_root, run, *slow)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().count('"train/loss"') >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert "preempted by SIGTERM at step" in out, out[-3000:]
    ckpt = load_checkpoint(run / "checkpoints" / "last.ckpt")
    step = ckpt["step"]
    assert 2 <= step < 8 and max(step_losses(run)) == step  # both ranks stopped after the same step
    resumed = torchrun(ddp_overrides(data_root, run, *slow, "trainer.max_steps=8", "trainer.resume=auto"), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert step_losses(run) == step_losses(tmp_path / "full")
    assert sorted(step_losses(run)) == list(range(1, 9))
