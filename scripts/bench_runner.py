"""The runner's cost: its train step against a bare PyTorch loop, the loader against training, padding.

(a) ``runner``: :func:`recognizer.engine.loop.train_step` with the default stability config
(label and feasibility checks, BatchNorm buffer copy, one host read-out, the guard, the inspector
attached). ``bare``: the loop a reader would write — forward, ``F.ctc_loss`` on
``log_softmax`` (fp32, mean over label lengths, zero_infinity), backward, ``clip_grad_norm_``,
AdamW step, scheduler step. Same CRNN (same initial weights), same real batches (the first
``--batches`` of epoch 0 of the configured data set, collated once), same optimizer settings.
A second bare loop (``bare'``, its own copy of the model and optimizer) is the A/A control: its
ratio to ``bare`` shows the benchmark's own spread and bias. The three modes rotate round by round
so that drifting machine load hits all alike; the figures are medians of per-round ratios. The clock
is this process's CPU time by default (one torch thread), which other processes on a shared machine
barely disturb; ``--clock wall`` measures wall time.

(b) the DataLoader alone (decode, cache, collate) in batches/s, first epoch and a cached epoch,
against the batches/s the runner consumes.

(c) the padded share of the inputs over one training epoch, plain shuffle against length
bucketing (``trainer.bucketing=true``), computed from ``dataset.widths`` exactly as
``train/padding`` is logged. ``spoken_digits`` is measured only if its cache is in ``data/``.

Usage::

    python scripts/bench_runner.py                         # data=digit_lines, 11 rounds × 10 steps
    python scripts/bench_runner.py --rounds 21 --clock wall --threads 2
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from recognizer import CONFIG_DIR
from recognizer.alphabet import Alphabet
from recognizer.ctc import check_feasible, check_targets
from recognizer.data.batching import Batch, BucketBatchSampler, EpochBatchSampler, padding_cells
from recognizer.data.loaders import make_loader
from recognizer.engine.loop import TrainState, train_step
from recognizer.engine.precision import resolve_precision
from recognizer.stability.runtime import attach_stability, make_ctc, make_guard


def load_config(data: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[f"data={data}", "paths.output_dir=."])


def bare_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, batch: Batch, clip: float, device: torch.device
) -> None:
    """One plain PyTorch training step: the work of ``train_step`` without its checks and guard."""
    batch = batch.to(device, non_blocking=True)  # as the runner does (a no-op on the CPU)
    model.train()
    logits, lengths = model(batch.inputs, batch.input_lengths)  # (B, T, C), (B,)
    log_probs = rearrange(logits.float().log_softmax(-1), "b t c -> t b c")
    loss = F.ctc_loss(
        log_probs, batch.targets, lengths, batch.target_lengths, blank=0, reduction="mean", zero_infinity=True
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    scheduler.step()


def time_steps(
    fn: Callable[[Batch], None], batches: list[Batch], steps: int, clock: Callable[[], float], cuda: bool = False
) -> float:
    if cuda:
        torch.cuda.synchronize()
    start = clock()
    for i in range(steps):
        fn(batches[i % len(batches)])
    if cuda:  # the queued GPU work belongs to these steps
        torch.cuda.synchronize()
    return (clock() - start) / steps


def bench_step(cfg: DictConfig, batches: list[Batch], alphabet: Alphabet, args: argparse.Namespace) -> float:
    """Print runner vs bare step times; return the runner's seconds per step."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    clock = time.process_time if args.clock == "cpu" and not cuda else time.perf_counter  # GPU: wall time
    torch.manual_seed(0)
    model = instantiate(cfg.model, num_classes=alphabet.num_classes).to(device)
    bare_model = copy.deepcopy(model)
    control_model = copy.deepcopy(model)
    total = cfg.trainer.max_epochs * 1000

    def optim(m: nn.Module):
        opt = instantiate(cfg.optimizer)(params=m.parameters())
        return opt, instantiate(cfg.scheduler)(optimizer=opt, total_steps=total)

    optimizer, scheduler = optim(model)
    bare_opt, bare_sched = optim(bare_model)
    control_opt, control_sched = optim(control_model)
    stab, clip = cfg.stability, cfg.trainer.grad_clip
    precision = resolve_precision("32", device)
    with tempfile.TemporaryDirectory() as run_dir:
        state = TrainState(model, optimizer, scheduler, precision, make_guard(stab))
        attach_stability(state, stab, run_dir)
        ctc = make_ctc(stab)
        modes = {
            "runner": lambda b: train_step(state, b, ctc, clip),
            "bare": lambda b: bare_step(bare_model, bare_opt, bare_sched, b, clip, device),
            # a second bare loop: bare' / bare measures the bench's own noise and bias (an A/A test)
            "bare'": lambda b: bare_step(control_model, control_opt, control_sched, b, clip, device),
        }
        for fn in modes.values():  # warm-up: allocator, oneDNN kernels
            time_steps(fn, batches, 3, clock, cuda)
        times: dict[str, list[float]] = {m: [] for m in modes}
        order = list(modes)
        for r in range(args.rounds):
            for mode in order[r % 3 :] + order[: r % 3]:  # rotate who goes first
                times[mode].append(time_steps(modes[mode], batches, args.steps, clock, cuda))
    print(
        f"(a) train step, CRNN ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), data={args.data}, "
        f"batch {cfg.data.batch_size}, {torch.cuda.get_device_name(device) if cuda else 'CPU'}, "
        f"{torch.get_num_threads()} thread(s), {'wall' if cuda else args.clock} clock, "
        f"{args.rounds} rounds × {args.steps} steps"
    )
    print(f"    {'mode':8s} {'ms/step':>9s} {'IQR (ms)':>14s}")
    for mode, values in times.items():
        q = quartiles(values)
        print(f"    {mode:8s} {1e3 * statistics.median(values):9.2f} {1e3 * q[0]:6.1f}–{1e3 * q[2]:.1f}")
    for a, b in (("runner", "bare"), ("bare'", "bare")):
        ratios = [x / y for x, y in zip(times[a], times[b])]
        q = quartiles(ratios)
        median_ratio = statistics.median(ratios)
        print(f"    {a} / {b}: median of per-round ratios {median_ratio:.3f} (IQR {q[0]:.3f}–{q[2]:.3f}); ", end="")
        print(f"ratio of medians {statistics.median(times[a]) / statistics.median(times[b]):.3f}")
    bare = statistics.median(times["bare"])
    extra = time_steps(lambda b: runner_extra(state, b, ctc), batches, 200, clock)
    print(f"    the runner's extra work timed alone: {1e3 * extra:.2f} ms/step = ratio {1 + extra / bare:.4f}")
    return statistics.median(times["runner"])


def runner_extra(state: TrainState, batch: Batch, ctc) -> None:
    """What ``train_step`` does beyond a bare step on a healthy batch, in isolation (no forward/backward)."""
    model = state.model
    check_targets(batch.targets, batch.target_lengths, model.num_classes, batch.ids)
    check_feasible(model.output_lengths(batch.input_lengths), batch.targets, batch.target_lengths, batch.ids)
    batch = batch.to("cpu", non_blocking=True)
    _ = [b.clone() for b in model.buffers() if b.is_floating_point()]
    loss, norm = torch.tensor(1.0), torch.tensor(2.0)
    loss_value, norm_value = torch.stack([loss, norm]).tolist()
    state.dist.sum([not math.isfinite(loss_value), not math.isfinite(norm_value)])
    state.guard.check(1, loss_value, norm_value, loss, batch.ids, None)


def bench_loader(loader, sampler: EpochBatchSampler, step_s: float) -> None:
    """Print the loader's batches/s (wall clock, the loader alone) against the runner's consumption."""
    rates = []
    for epoch in range(2):  # the first epoch decodes and fills the cache; the second reads it
        sampler.set_epoch(epoch)
        start, n = time.perf_counter(), 0
        for _ in loader:
            n += 1
        rates.append(n / (time.perf_counter() - start))
    print(f"(b) loader alone: {rates[0]:.0f} batches/s (epoch 1, decoding), {rates[1]:.0f} batches/s (cached)")
    print(
        f"    training consumes {1 / step_s:.1f} batches/s → loading is {1 / step_s / rates[1]:.1%} of a step "
        f"({1 / step_s / rates[0]:.1%} in the first epoch), with num_workers=0"
    )


def epoch_padding(sampler: EpochBatchSampler, widths: list[int], epoch: int = 0) -> float:
    """The padded share of one epoch's inputs, as ``train/padding`` logs it."""
    sampler.set_epoch(epoch)
    cells = [padding_cells(torch.tensor([widths[i] for i in b]), max(widths[i] for i in b)) for b in sampler]
    return sum(p for p, _ in cells) / sum(t for _, t in cells)


def quartiles(values: list[float]) -> list[float]:
    """First quartile, median, third quartile (one value: itself three times)."""
    return statistics.quantiles(values, n=4) if len(values) > 1 else values * 3


def bench_padding(name: str) -> None:
    """Print the padding fraction of one train epoch with and without bucketing."""
    cfg = load_config(name)
    data = instantiate(cfg.data)
    widths = data.dataset("train").widths
    indices, bs = list(range(len(widths))), data.batch_size
    plain = epoch_padding(EpochBatchSampler(indices, bs, shuffle=True, seed=cfg.seed), widths)
    pools = {p: BucketBatchSampler(indices, widths, bs, True, seed=cfg.seed, pool_batches=p) for p in (10, 50)}
    bucketed = {p: epoch_padding(s, widths) for p, s in pools.items()}
    print(
        f"    {name:14s} {len(widths):6d} {bs:5d} {min(widths):4d}–{max(widths):<5d} {plain:8.1%} "
        + " ".join(f"{v:12.1%}" for v in bucketed.values())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digit_lines", help="data config for (a) and (b)")
    parser.add_argument("--rounds", type=int, default=11, help="alternating rounds (medians are reported)")
    parser.add_argument("--steps", type=int, default=10, help="steps per mode and round")
    parser.add_argument("--batches", type=int, default=20, help="distinct real batches cycled through")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N for (a); CUDA timings use wall time")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="process CPU time or wall time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.data)
    data = instantiate(cfg.data)
    train_set = data.dataset("train")
    alphabet = data.alphabet() or Alphabet.from_texts(train_set.texts)
    loader, sampler = make_loader(
        train_set, list(range(len(train_set))), alphabet, data.batch_size, True, cfg.seed, "error"
    )
    sampler.set_epoch(0)
    batches = [b for _, b in zip(range(args.batches), loader)]
    step_s = bench_step(cfg, batches, alphabet, args)
    bench_loader(loader, sampler, step_s)
    print("(c) padded share of one train epoch (seed 0): plain shuffle vs trainer.bucketing=true")
    print(
        f"    {'data':14s} {'lines':>6s} {'batch':>5s} {'widths':>9s} {'plain':>8s} {'pool 10':>12s} {'pool 50':>12s}"
    )
    bench_padding("digit_lines")
    if instantiate(load_config("spoken_digits").data).is_generated():
        bench_padding("spoken_digits")
    else:  # synthesising the default set takes minutes: not a benchmark's business
        print(
            "    spoken_digits: not in the data cache (generate it with one `recognizer-train data=spoken_digits` run)"
        )


if __name__ == "__main__":
    main()
