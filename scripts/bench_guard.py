"""Step time of the CRNN with the stability guard off, on, and under autograd anomaly mode.

"off" is a bare step (forward, fp32 CTC, backward, clipping, optimizer and scheduler step) with
no contract checks, no host read-out and no guard. "on" is :func:`recognizer.engine.loop.train_step`
as training runs it with the default stability config: label and feasibility checks, the BatchNorm
buffer copy, the one host read-out of (loss, grad norm), the guard, the non-finite inspector attached
(it runs only on failure) and, for "on+rollback", a CPU snapshot every 50 steps. "anomaly" is "on"
under ``torch.autograd.set_detect_anomaly(True)``. Modes are interleaved round by round so that
drifting machine load hits all of them alike; the figure is the median step time over rounds.
By default the clock is this process's CPU time with one torch thread, which other processes on a
shared machine barely disturb; ``--clock wall`` measures wall time instead.

Usage::

    python scripts/bench_guard.py                       # default CRNN, batch 32, 96-px wide lines
    python scripts/bench_guard.py --rounds 21 --steps 10 --threads 2 --clock wall
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recognizer import CONFIG_DIR
from recognizer.ctc import CTCLoss, check_feasible, check_targets
from recognizer.data.batching import Batch
from recognizer.engine.loop import TrainState, train_step
from recognizer.engine.precision import resolve_precision
from recognizer.engine.schedulers import constant
from recognizer.stability.guard import NonFiniteGuard
from recognizer.stability.localize import NonFiniteInspector
from recognizer.stability.rollback import Rollback


def make_batch(batch_size: int, height: int, width: int, num_classes: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 9, (batch_size,), generator=g)
    targets = torch.randint(1, num_classes, (batch_size, 8), generator=g)
    inputs = torch.rand(batch_size, 1, height, width, generator=g)
    ids = [f"b{i}" for i in range(batch_size)]
    return Batch(inputs, torch.full((batch_size,), width), targets, lengths, ["x"] * batch_size, ids)


def make_state(policy: str, run_dir: str, height: int, num_classes: int) -> TrainState:
    torch.manual_seed(0)
    model_cfg = OmegaConf.load(f"{CONFIG_DIR}/model/crnn.yaml")
    model_cfg.height = height
    model = instantiate(model_cfg, num_classes=num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    precision = resolve_precision("32", torch.device("cpu"))
    state = TrainState(model, optimizer, constant(optimizer, 10), precision, NonFiniteGuard(policy))
    state.inspector = NonFiniteInspector(run_dir)
    if policy == "rollback":
        state.rollback = Rollback(every_n_steps=50)
    return state


def bare_step(state: TrainState, batch: Batch, ctc: CTCLoss, grad_clip: float) -> None:
    """The same work as a training step, without any check, read-out or guard."""
    state.model.train()
    logits, lengths = state.model(batch.inputs, batch.input_lengths)
    out = ctc(logits, lengths, batch.targets, batch.target_lengths)
    state.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), grad_clip)
    state.optimizer.step()
    state.scheduler.step()


def guard_work(state: TrainState, batch: Batch, loss: torch.Tensor, norm: torch.Tensor) -> None:
    """What ``train_step`` does beyond a bare step on a healthy batch, in isolation."""
    model = state.model
    check_targets(batch.targets, batch.target_lengths, model.num_classes, batch.ids)
    check_feasible(model.output_lengths(batch.input_lengths), batch.targets, batch.target_lengths, batch.ids)
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    _ = [b.clone() for b in buffers]
    loss_value, norm_value = torch.stack([loss.detach(), norm.detach().float()]).tolist()
    state.guard.check(1, loss_value, norm_value, loss, batch.ids, None)


def time_steps(fn, steps: int, clock=time.process_time) -> float:
    start = clock()
    for _ in range(steps):
        fn()
    return (clock() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11, help="interleaved rounds (the median is reported)")
    parser.add_argument("--steps", type=int, default=10, help="steps per mode and round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=96, help="line width in pixels")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="process CPU time or wall time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    height, num_classes, ctc = 16, 11, CTCLoss()
    batch = make_batch(args.batch_size, height, args.width, num_classes)
    with tempfile.TemporaryDirectory() as run_dir:
        states = {
            mode: make_state("rollback" if mode == "on+rollback" else "raise", run_dir, height, num_classes)
            for mode in ("off", "on", "on+rollback", "anomaly")
        }

        def step(mode: str):
            state = states[mode]
            if mode == "off":
                return lambda: bare_step(state, batch, ctc, 1.0)
            if mode == "anomaly":

                def anomalous() -> None:
                    with torch.autograd.set_detect_anomaly(True):
                        train_step(state, batch, ctc, 1.0)

                return anomalous
            return lambda: train_step(state, batch, ctc, 1.0)

        for mode in states:  # warm-up: allocator, oneDNN kernels
            time_steps(step(mode), 3)
        times: dict[str, list[float]] = {mode: [] for mode in states}
        for r in range(args.rounds):
            order = list(states) if r % 2 == 0 else list(reversed(states))
            for mode in order:
                times[mode].append(time_steps(step(mode), args.steps, clock))
    off = statistics.median(times["off"])
    print(
        f"CRNN (recognizer/conf/model/crnn.yaml), batch {args.batch_size} × 1 × {height} × {args.width}, CPU, "
        f"{torch.get_num_threads()} thread(s), {args.clock} clock; {args.rounds} rounds × {args.steps} steps, "
        "median per step"
    )
    print(f"{'mode':12s} {'ms/step':>9s} {'ratio':>7s} {'spread':>14s}")
    for mode, values in times.items():
        med = statistics.median(values)
        q1, q3 = statistics.quantiles(values, n=4)[0], statistics.quantiles(values, n=4)[2]
        print(f"{mode:12s} {1e3 * med:9.2f} {med / off:7.3f}   IQR {1e3 * q1:.1f}–{1e3 * q3:.1f}")
    paired = [on / o for on, o in zip(times["on"], times["off"])]
    print(f"guard on / off, median of per-round ratios: {statistics.median(paired):.3f}")
    extra = time_steps(lambda: guard_work(states["on"], batch, torch.tensor(1.0), torch.tensor(2.0)), 200, clock)
    print(
        f"the guard's own work timed alone: {1e3 * extra:.3f} ms per step = {extra / off:.2%} of a bare step "
        f"(ratio {1 + extra / off:.4f})"
    )
    assert all(math.isfinite(v) for vs in times.values() for v in vs)


if __name__ == "__main__":
    main()
