"""The training loop: one step, one epoch, evaluation, and ``fit`` that ties them together.

Order of a step (the stability rules live here):
labels and lengths checked on CPU → forward under autocast → fp32 CTC loss → scaled backward →
``unscale_`` → ``clip_grad_norm_`` → one host sync for (loss, grad norm) → the guard decides →
optimizer step → scheduler step only if the optimizer really stepped.

Under fp16's GradScaler a finite loss with a non-finite gradient is an overflow the scaler skips,
until the guard's rule (``stability.min_loss_scale``, ``stability.max_consecutive_overflows``) makes
it a non-finite fault like any other: raised with the samples and the localisation, or skipped and
counted, or rolled back, per ``stability.nonfinite_policy``.

Stability extras cost nothing on a healthy step: the non-finite inspector (save the batch, replay
it with hooks, name the first bad module) runs only when the guard fires; the rollback snapshot is
a CPU copy every ``stability.rollback_every_n_steps`` steps; blank collapse is judged from the
validation outputs.

Preemption: during ``fit``, SIGTERM and SIGUSR1 (what SLURM sends before it stops a job) and a first
Ctrl-C (SIGINT) only raise a flag; the loop finishes the current step, writes ``last.ckpt`` with the
mid-epoch position and raises :class:`Preempted`, so ``trainer.resume=auto`` continues exactly where
the run stopped. A second Ctrl-C stops at once (``KeyboardInterrupt``), as it always did.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from tqdm import tqdm

from recognizer.alphabet import Alphabet
from recognizer.checkpoint import CheckpointError, rng_state, save_checkpoint, set_rng_state
from recognizer.ctc import CTCLoss, check_feasible, check_targets, greedy_decode
from recognizer.data.batching import Batch, EpochBatchSampler, padding_cells
from recognizer.engine.callbacks import Callback
from recognizer.engine.distributed import Dist, sync_buffers
from recognizer.engine.ema import WeightAverage
from recognizer.engine.precision import Precision
from recognizer.loggers import MetricLogger
from recognizer.metrics import ErrorRates
from recognizer.models.base import Recognizer
from recognizer.stability.collapse import blank_frames
from recognizer.stability.guard import NonFiniteGuard, NonFiniteStepError
from recognizer.stability.localize import NonFiniteInspector

log = logging.getLogger(__name__)

MONITORS = ("val/cer", "val/wer", "val/loss")  # what trainer.monitor can pick best.ckpt by (lower is better)


@dataclass
class TrainerOptions:
    """Loop settings (``recognizer/conf/trainer``). See the YAML for each key's meaning."""

    max_epochs: int = 30
    max_steps: int | None = None
    device: str = "auto"
    precision: str = "auto"
    grad_clip: float = 1.0
    log_every_n_steps: int = 10
    val_every_n_epochs: int = 1
    checkpoint_every_n_steps: int = 0
    monitor: str = "val/cer"
    early_stopping_patience: int | None = None
    progress_bar: bool = True
    resume: str | None = None
    resume_allow: Sequence[str] = ()
    overwrite: bool = False
    init_from: str | None = None
    init_alphabet: str = "strict"
    freeze_backbone_steps: int = 0
    train_samples: int | None = None
    num_threads: int | None = None
    malloc: str = "system"
    bucketing: bool = False
    bucket_pool_batches: int = 50
    preempt_exit_code: int = 0
    alignment_samples: int = 0
    compile: bool = False
    dist_timeout_s: float = 1800.0
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        """Refuse values the loop would only fail on later: after an epoch's work, before its checkpoint."""
        counts = {"max_epochs": self.max_epochs, "log_every_n_steps": self.log_every_n_steps}
        counts |= {"val_every_n_epochs": self.val_every_n_epochs}
        optional = {"max_steps": self.max_steps, "early_stopping_patience": self.early_stopping_patience}
        counts |= {key: value for key, value in optional.items() if value is not None}
        for key, value in counts.items():
            if value < 1:
                raise ValueError(f"trainer.{key} must be 1 or more, got {value}")
        if self.checkpoint_every_n_steps < 0:
            raise ValueError(
                f"trainer.checkpoint_every_n_steps must be 0 (off) or more, got {self.checkpoint_every_n_steps}"
            )
        if self.monitor not in MONITORS:
            raise ValueError(f"trainer.monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}")


@dataclass
class TrainState:
    """Everything that changes during training and is saved in a checkpoint."""

    model: Recognizer
    optimizer: Optimizer
    scheduler: LRScheduler
    precision: Precision
    guard: NonFiniteGuard
    step: int = 0  # optimizer steps applied or skipped
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of the current epoch already consumed
    best_metric: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0  # validations without improvement (early stopping)
    history: list[dict[str, float]] = field(default_factory=list)
    train_time: float = 0.0  # seconds of training so far (validation included), across resumes
    inspector: NonFiniteInspector | None = None  # failure path: save + localise (not saved)
    dist: Dist = field(default_factory=Dist)  # this process's rank (a single process by default)
    train_forward: nn.Module | None = None  # the training forward's wrapper (DDP, torch.compile) if any
    ema: WeightAverage | None = None  # averaged weights: validated and saved as the checkpoint's model
    # the loop's hooks (recognizer.engine.callbacks), called in order: the stability monitors, the backbone freeze
    callbacks: list[Callback] = field(default_factory=list)

    @property
    def eval_model(self) -> Recognizer:
        """The weights that are validated and saved as ``model``: the average if there is one."""
        return self.model if self.ema is None else self.ema.module  # type: ignore[return-value]

    def state_dict(self) -> dict[str, Any]:
        # "model" holds the weights to use (eval, export, init_from read it); with an average, the trained
        # weights go to "train_model" for resuming
        ema = {} if self.ema is None else {"train_model": self.model.state_dict(), "ema": self.ema.state_dict()}
        return {
            "model": self.eval_model.state_dict(),
            **ema,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "precision": self.precision.name,  # as resolved: trainer.precision=auto differs by device
            "guard": self.guard.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "train_time": self.train_time,
            "rng": rng_state(),
            "world_size": self.dist.world_size,
            **{k: v for callback in self.callbacks for k, v in callback.checkpoint_items().items()},
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt.get("train_model", ckpt["model"]))
        if self.ema is not None:  # a checkpoint without an average starts one from its weights
            self.ema.load_state_dict(ckpt.get("ema", {"updates": 0}), ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:  # a scaler that did not run (fp32, bf16) saved nothing: fp16 after it starts afresh
            self.precision.scaler.load_state_dict(ckpt["scaler"])
        self.guard.load_state_dict(ckpt["guard"])
        for key in ("step", "epoch", "batch_in_epoch", "best_metric", "best_epoch", "bad_epochs", "history"):
            setattr(self, key, ckpt[key])
        # older checkpoints lack train_time: the time of their last validation is the best guess
        self.train_time = float(ckpt.get("train_time", self.history[-1]["time"] if self.history else 0.0))
        per_rank = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        if len(per_rank) != self.dist.world_size:
            raise CheckpointError(
                f"the checkpoint holds the random states of {len(per_rank)} process(es), this run has "
                f"{self.dist.world_size}: resume with the same number of processes"
            )
        set_rng_state(per_rank[self.dist.rank])  # each rank continues its own dropout stream
        for callback in self.callbacks:
            callback.load_checkpoint_items(ckpt)


PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(Exception):
    """Training stopped on a signal after writing ``last.ckpt``; resume with ``trainer.resume=auto``."""

    def __init__(self, signum: int, step: int, epoch: int, batch_in_epoch: int) -> None:
        self.signum, self.step, self.epoch, self.batch_in_epoch = signum, step, epoch, batch_in_epoch
        how = (
            "interrupted by Ctrl-C (SIGINT)"
            if signum == signal.SIGINT
            else f"preempted by {signal.Signals(signum).name}"
        )
        super().__init__(
            f"{how} at step {step} (epoch {epoch + 1}, batch "
            f"{batch_in_epoch}): wrote checkpoints/last.ckpt; continue with trainer.resume=auto"
        )


@dataclass
class StopFlag:
    """Set by a preemption signal handler; the loop reads it between steps."""

    signum: int | None = None


@contextlib.contextmanager
def preemption_handlers() -> Iterator[StopFlag]:
    """Turn SIGTERM/SIGUSR1/SIGINT into a :class:`StopFlag` for the duration; restore the previous handlers.

    A second SIGINT raises ``KeyboardInterrupt`` (the user means it).

    Handlers can only be installed from the main thread of the main interpreter; elsewhere (a
    training run inside a thread) the flag never fires and the signals keep their previous meaning.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: object) -> None:  # only set a flag: safe at any bytecode
        if signum == signal.SIGINT and flag.signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        if signum == signal.SIGINT:
            os.write(2, b"Ctrl-C: finishing this step, then writing last.ckpt (Ctrl-C again stops at once)\n")
        flag.signum = signum

    previous = {s: signal.signal(s, handler) for s in PREEMPT_SIGNALS}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    applied: bool


def train_step(state: TrainState, batch: Batch, ctc: CTCLoss, grad_clip: float) -> StepResult:
    """One optimisation step on ``batch`` (on CPU; moved to the device here)."""
    model, optimizer, precision = state.model, state.optimizer, state.precision
    for callback in state.callbacks:
        callback.on_step_start(state)
    # Contract checks on the CPU copy: no device sync, and a named error instead of a NaN later.
    check_targets(batch.targets, batch.target_lengths, model.num_classes, batch.ids)
    check_feasible(model.output_lengths(batch.input_lengths), batch.targets, batch.target_lengths, batch.ids)
    batch = batch.to(precision.device, non_blocking=True)
    model.train()
    # A NaN batch poisons BatchNorm running statistics during the forward itself; keep a device
    # copy of the (few, small) float buffers so a rejected step leaves no trace (no host sync).
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    saved_buffers = [b.clone() for b in buffers]
    with precision.autocast():
        forward = model if state.train_forward is None else state.train_forward  # (no bool(): compiled modules)
        logits, output_lengths = forward(batch.inputs, batch.input_lengths)  # (B, T, C), (B,)
    out = ctc(logits, output_lengths, batch.targets, batch.target_lengths)
    optimizer.zero_grad(set_to_none=True)
    scaler = precision.scaler
    scaler.scale(out.loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    max_norm = grad_clip if grad_clip and grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    loss_value, norm_value = torch.stack([out.loss.detach(), grad_norm.detach().float()]).tolist()
    lr = optimizer.param_groups[0]["lr"]  # the rate of this step (the scheduler steps after it)
    state.step += 1
    mean_loss = judge_step(state, batch, ctc, out.per_sample, loss_value, norm_value, (buffers, saved_buffers))
    if mean_loss is None:  # not applied: an fp16 overflow GradScaler skipped, or a fault skipped or rolled back
        return StepResult(loss_value, norm_value, applied=False)
    scale_before = scaler.get_scale() if precision.scaled else 1.0
    scaler.step(optimizer)
    scaler.update()
    applied = not precision.scaled or scaler.get_scale() >= scale_before
    after_step(state, applied, mean_loss, lr)
    return StepResult(loss_value, norm_value, applied)


def judge_step(
    state: TrainState,
    batch: Batch,
    ctc: CTCLoss,
    per_sample: torch.Tensor,
    loss_value: float,
    norm_value: float,
    buffers: tuple[list[torch.Tensor], list[torch.Tensor]],
) -> float | None:
    """Decide a step whose gradients are ready: the guard's rules, agreed over ranks.

    Args:
        per_sample: the unreduced losses (on the device; read only on a non-finite step).
        loss_value, norm_value: this rank's loss and gradient norm (before clipping).
        buffers: the model's float buffers and their copies from before the forward, restored on a fault.

    Returns:
        The loss averaged over ranks for a step to apply; None for a step that is not applied (an fp16
        overflow GradScaler skips, or a non-finite fault skipped or rolled back per the policy).
    """
    model, optimizer, precision, scaler = state.model, state.optimizer, state.precision, state.precision.scaler
    # Under DDP every rank must take the same decisions: agree on which quantity was non-finite anywhere,
    # and judge divergence on the mean loss over ranks (one all-reduce for both).
    finite_loss = math.isfinite(loss_value)
    flags = [not finite_loss, not math.isfinite(norm_value), loss_value if finite_loss else 0.0]
    loss_bad_sum, norm_bad_sum, loss_sum = state.dist.sum(flags)
    loss_bad, norm_bad = loss_bad_sum > 0, norm_bad_sum > 0
    mean_loss = loss_sum / state.dist.world_size
    overflow_fault = ""  # why an fp16 overflow is a fault (the guard's rule); "" for an ordinary one
    if precision.scaled and not loss_bad and norm_bad:
        # fp16 gradient overflow: GradScaler skips the step and lowers the scale; not a data fault, unless
        # the scale has fallen too low or it keeps happening (a NaN gradient that no scale can fix).
        overflow_fault = state.guard.overflow(state.step, scaler.get_scale())
        if not overflow_fault:
            scaler.step(optimizer)
            scaler.update()
            return None
    if loss_bad or norm_bad:
        restore_buffers(*buffers)  # before the guard may raise or save the state
    inspector = state.inspector
    diagnose = None
    if inspector is not None:  # a closure only; it runs only if the guard fires

        def diagnose() -> str:
            return inspector(state.step, model, optimizer, scaler, batch, ctc, precision.autocast)

    # per_sample stays on the device: the guard reads it only on a non-finite step (no copy per step)
    # the fault is another rank's if our loss is finite but some rank's is not (or only theirs overflowed)
    peer_fault = math.isfinite(loss_value) and (loss_bad or (norm_bad and math.isfinite(norm_value)))
    try:
        healthy = state.guard.check(
            state.step, loss_value, norm_value, per_sample, batch.ids, diagnose, peer_fault, overflow_fault
        )
    except NonFiniteStepError as error:  # every rank raises at this step (the decision is agreed)
        raise agreed_error(error, state.dist, own_fault=not peer_fault) from None
    if not healthy:
        optimizer.zero_grad(set_to_none=True)
        scaler.update()
        if state.guard.policy == "rollback":
            if not any(callback.on_step_rejected(state, state.guard.last_message) for callback in state.callbacks):
                raise ValueError(
                    "stability.nonfinite_policy=rollback needs a callback that restores a good state "
                    "(recognizer.stability.monitors.StabilityMonitors with a Rollback)"
                )
            state.guard.consecutive_overflows = 0  # the restored scaler starts its search afresh
        return None
    return mean_loss


def after_step(state: TrainState, applied: bool, mean_loss: float, lr: float) -> None:
    """After a healthy step: schedule and weight average (if the optimizer stepped), then the callbacks.

    Args:
        applied: the optimizer really stepped (GradScaler may skip a step it lowered the scale for).
        mean_loss: the step's loss, averaged over ranks.
        lr: the rate the step used.
    """
    if applied:
        state.scheduler.step()  # only when the optimizer really stepped
        if state.ema is not None:
            state.ema.update(state.model)
    for callback in state.callbacks:
        callback.on_step_end(state, applied, mean_loss, lr)


@torch.no_grad()
def restore_buffers(buffers: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    """Copy ``saved`` back into ``buffers`` (BatchNorm statistics of a rejected step)."""
    for b, s in zip(buffers, saved):
        b.copy_(s)


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader: Iterable[Batch],
    ctc: CTCLoss,
    alphabet: Alphabet,
    precision: Precision,
    keep_predictions: bool = False,
    dist: Dist | None = None,
) -> tuple[dict[str, float], list[tuple[str, str, str]]]:
    """Loss, CER, WER and blank statistics with greedy decoding; optionally (id, reference, hypothesis) rows.

    ``blank`` is the fraction of valid output frames whose argmax is the blank, ``empty`` the
    fraction of empty hypotheses (both near 1 mean blank collapse). Under DDP (``dist``) each rank
    evaluates its shard and the counts are summed over ranks (rows stay per rank), so the metrics
    are those of the whole split.
    """
    model.eval()
    rates, loss_sum, n = ErrorRates(), 0.0, 0
    blanks = frames = empty = 0
    rows: list[tuple[str, str, str]] = []
    for batch in loader:
        moved = batch.to(precision.device, non_blocking=True)
        with precision.autocast():
            logits, lengths = model(moved.inputs, moved.input_lengths)
        out = ctc(logits, lengths, moved.targets, moved.target_lengths)
        loss_sum += float(out.loss) * len(batch)
        n += len(batch)
        hyps = [alphabet.decode(ids) for ids in greedy_decode(logits, lengths)]
        b, f = blank_frames(logits, lengths)
        blanks, frames, empty = blanks + b, frames + f, empty + sum(not h for h in hyps)
        rates.update(batch.texts, hyps)  # the transcripts, not the labels: an <unk> in a label is no match
        if keep_predictions:
            rows += list(zip(batch.ids, batch.texts, hyps))
    if dist is not None and dist.enabled:
        counts = [rates.char_errors, rates.chars, rates.word_errors, rates.words, loss_sum, n, blanks, frames, empty]
        counts = dist.sum(counts)
        rates.char_errors, rates.chars, rates.word_errors, rates.words = (int(c) for c in counts[:4])
        loss_sum = counts[4]
        n, blanks, frames, empty = (int(c) for c in counts[5:])
    metrics = {
        "loss": loss_sum / max(n, 1),
        "cer": rates.cer,
        "wer": rates.wer,
        "blank": blanks / max(frames, 1),
        "empty": empty / max(n, 1),
    }
    return metrics, rows


@dataclass
class StepOptions:
    """How ``fit`` runs each train step (the ``stability`` keys that concern the step, and the batch transform)."""

    grad_norm_every_step: bool = False  # log train/grad_norm and train/loss at every step (already on the host)
    detect_anomaly: bool = False  # every step under torch.autograd.set_detect_anomaly (slow; deep dives)
    augment: Callable[[Batch], Batch] | None = None  # applied to each train batch in the main process


class FitRun:
    """What one call of :func:`fit` shares between its epochs: the clock, the checkpoint writer, the stop rule."""

    def __init__(self, state: TrainState, opts: TrainerOptions, run_dir: Path, describe: dict[str, Any]) -> None:
        self.state, self.opts, self.describe, self.run_dir = state, opts, describe, run_dir
        self.ckpt_dir = run_dir / "checkpoints"
        self.start = time.perf_counter()
        self.elapsed_before = state.train_time
        self.padded = self.cells = 0  # padding along the width/time axis since the last train log

    def elapsed(self) -> float:
        """Seconds of training across resumes, stored in the state (true also for a run stopped mid-epoch)."""
        self.state.train_time = self.elapsed_before + time.perf_counter() - self.start
        return self.state.train_time

    def checkpoint(self, name: str) -> None:
        """Write ``checkpoints/NAME`` with the training time up to now; every rank takes part, rank 0 writes."""
        self.elapsed()
        dist = self.state.dist
        per_rank = dist.gather(rng_state()) if dist.enabled else None  # each rank's RNG state
        if dist.is_main:
            extra = {"rng_per_rank": per_rank} if per_rank is not None else {}
            save_checkpoint({**self.state.state_dict(), **extra, **self.describe}, self.ckpt_dir / name)
        # no rank runs ahead (or exits after a preemption, making torchrun stop the group) while rank 0 writes
        dist.barrier()

    def done(self) -> bool:
        return self.opts.max_steps is not None and self.state.step >= self.opts.max_steps


def fit(
    state: TrainState,
    sampler: EpochBatchSampler,
    train_loader: Iterable[Batch],
    val_loader: Iterable[Batch],
    ctc: CTCLoss,
    alphabet: Alphabet,
    opts: TrainerOptions,
    run_dir: Path,
    logger: MetricLogger,
    describe: dict[str, Any],
    grad_norm_every_step: bool = False,
    detect_anomaly: bool = False,
    augment: Callable[[Batch], Batch] | None = None,
) -> TrainState:
    """Train until ``max_epochs``/``max_steps`` or early stopping; validate and checkpoint.

    Args:
        state: model/optimizer/... and counters (possibly restored from a checkpoint).
        sampler: the train batch sampler (its epoch and start batch are set here).
        train_loader, val_loader: loaders yielding :class:`Batch`.
        ctc: the loss.
        alphabet: for decoding in validation.
        opts: loop settings.
        run_dir: checkpoints go to ``run_dir/checkpoints``.
        logger: metric sink.
        describe: extra self-description stored in every checkpoint (config, alphabet).
        grad_norm_every_step, detect_anomaly, augment: see :class:`StepOptions`; ``augment`` (e.g.
            SpecAugment) draws from the checkpointed global RNG, not from loader workers, so resume stays exact.

    Raises:
        Preempted: SIGTERM or SIGUSR1 arrived; the step in flight finished and ``last.ckpt`` holds
            the position to resume from. The previous signal handlers are restored in any case.
    """
    run = FitRun(state, opts, run_dir, describe)
    step_opts = StepOptions(grad_norm_every_step, detect_anomaly, augment)
    dist = state.dist
    with preemption_handlers() as stop:
        for callback in state.callbacks:
            callback.on_fit_start(state)
        while state.epoch < opts.max_epochs and not run.done():
            if train_epoch(run, sampler, train_loader, ctc, logger, step_opts, stop):
                raise preempt(state, stop.signum or signal.SIGTERM, run.checkpoint)  # after the step in flight
            if run.done() and state.batch_in_epoch < len(sampler) + sampler.start_batch:
                # max_steps stopped the run inside an epoch: its final weights are validated too (best.ckpt,
                # metrics.json) and last.ckpt keeps the position, so a resume continues this epoch. The
                # loaders have their own generators and eval mode has no dropout: a validation draws nothing
                # from the random streams, and the resumed steps are those of a run never stopped here.
                log.info(
                    "max_steps %d reached inside epoch %d: validating the final weights",
                    opts.max_steps,
                    state.epoch + 1,
                )
                validate_and_checkpoint(run, val_loader, ctc, alphabet, logger, f"step_{state.step:07d}")
                break
            state.epoch += 1
            state.batch_in_epoch = 0
            if state.epoch % opts.val_every_n_epochs == 0 or state.epoch == opts.max_epochs or run.done():
                stop_early = validate_and_checkpoint(run, val_loader, ctc, alphabet, logger, f"epoch_{state.epoch:03d}")
                if stop_early:
                    log.info("early stopping: no improvement of %s for %d validations", opts.monitor, state.bad_epochs)
                    break
            else:
                run.checkpoint("last.ckpt")
            if dist.any(stop.signum is not None):  # the signal came during validation: last.ckpt is current
                raise preempt(state, stop.signum or signal.SIGTERM, run.checkpoint)
    run.elapsed()  # train/time of metrics.json: true also for a run that stopped inside its first epoch
    return state


def train_epoch(
    run: FitRun,
    sampler: EpochBatchSampler,
    train_loader: Iterable[Batch],
    ctc: CTCLoss,
    logger: MetricLogger,
    step_opts: StepOptions,
    stop: StopFlag,
) -> bool:
    """Train the rest of the current epoch (from ``state.batch_in_epoch``), or up to ``max_steps``.

    Returns:
        True if a preemption signal reached any rank: the loop stopped after the step in flight.
    """
    state, opts, dist = run.state, run.opts, run.state.dist
    sampler.set_epoch(state.epoch, start_batch=state.batch_in_epoch)
    bar = tqdm(
        train_loader,
        desc=f"epoch {state.epoch + 1}/{opts.max_epochs}",
        leave=False,
        disable=None if opts.progress_bar and dist.is_main else True,  # None: off when not a terminal
        initial=state.batch_in_epoch,
        total=state.batch_in_epoch + len(sampler),
        mininterval=1.0,
    )
    stopping = False
    for batch in bar:
        if step_opts.augment is not None:
            batch = step_opts.augment(batch)
        with torch.autograd.set_detect_anomaly(step_opts.detect_anomaly):
            result = train_step(state, batch, ctc, opts.grad_clip)
        state.batch_in_epoch += 1
        for callback in state.callbacks:
            callback.on_batch_end(state)
        pad, total = padding_cells(batch.input_lengths, batch.inputs.shape[-1])  # CPU lengths: no sync
        run.padded, run.cells = run.padded + pad, run.cells + total
        if step_opts.grad_norm_every_step and state.step % opts.log_every_n_steps and result.applied:
            logger.log_metrics({"train/grad_norm": result.grad_norm, "train/loss": result.loss}, state.step)
        if state.step % opts.log_every_n_steps == 0 or not result.applied:
            log_step(run, logger, bar, result)
        if opts.checkpoint_every_n_steps and state.step % opts.checkpoint_every_n_steps == 0:
            run.checkpoint("last.ckpt")
        stopping = dist.any(stop.signum is not None)  # a signal to any rank stops all of them
        if run.done() or stopping:
            break
    bar.close()
    return stopping


def log_step(run: FitRun, logger: MetricLogger, bar: Any, result: StepResult) -> None:
    """Log a train step's loss, gradient norm, rate, skip, and the padded share of the inputs since the last log."""
    state = run.state
    padding, run.padded, run.cells = run.padded / max(run.cells, 1), 0, 0
    lr = state.optimizer.param_groups[0]["lr"]
    logger.log_metrics(
        {
            "train/loss": result.loss,
            "train/grad_norm": result.grad_norm,
            "train/lr": lr,
            "train/skipped": float(not result.applied),
            "train/padding": padding,  # padded share of the inputs
            "epoch": state.epoch,
            "time": run.elapsed(),
        },
        state.step,
    )
    bar.set_postfix(loss=f"{result.loss:.3f}", lr=f"{lr:.2e}", refresh=False)


def agreed_error(error: NonFiniteStepError, dist: Dist, own_fault: bool) -> NonFiniteStepError:
    """Under DDP, the error every rank raises: the messages of the ranks where the fault arose.

    Those name the samples, the layer and where the batch was saved; the healthy ranks would
    otherwise fail first with "on another rank", and torchrun would report (and stop the job on)
    theirs while the faulty rank was still writing its diagnosis.
    """
    if not dist.enabled:
        return error
    messages = dist.gather((own_fault, str(error)))
    faulty = [f"rank {rank}: {message}" for rank, (own, message) in enumerate(messages) if own]
    return NonFiniteStepError(" | ".join(faulty) or str(error))


def preempt(state: TrainState, signum: int, checkpoint: Any) -> Preempted:
    """Write ``last.ckpt`` (with the mid-epoch position), log why, and return the error to raise."""
    checkpoint("last.ckpt")
    error = Preempted(signum, state.step, state.epoch, state.batch_in_epoch)
    log.log(logging.WARNING if state.dist.is_main else logging.INFO, "%s", error)  # rank 0 wrote it: one voice
    return error


def validate_and_checkpoint(
    run: FitRun,
    val_loader: Iterable[Batch],
    ctc: CTCLoss,
    alphabet: Alphabet,
    logger: MetricLogger,
    name: str,
) -> bool:
    """Validate, log, write best/last checkpoints and alignment pictures (to ``alignments/NAME``).

    Returns:
        True if early stopping triggers.
    """
    state, opts, elapsed = run.state, run.opts, run.elapsed()  # elapsed: the training up to this validation
    sync_buffers(state.model, state.dist)  # every rank validates the weights and statistics rank 0 saves
    if state.ema is not None:
        sync_buffers(state.ema.module, state.dist)  # averaged from each rank's own statistics
    metrics, _ = evaluate_loader(state.eval_model, val_loader, ctc, alphabet, state.precision, dist=state.dist)
    record = {f"val/{k}": v for k, v in metrics.items()} | {"epoch": state.epoch, "time": elapsed}
    state.history.append({"step": state.step, **record})
    logger.log_metrics(record, state.step)
    value = record[opts.monitor]
    improved = value < state.best_metric
    if improved:
        state.best_metric, state.best_epoch, state.bad_epochs = value, state.epoch, 0
    else:
        state.bad_epochs += 1
    log.info(
        "epoch %d step %d: val/loss %.4f val/cer %.4f val/wer %.4f (%.0f s)%s",
        state.epoch,
        state.step,
        metrics["loss"],
        metrics["cer"],
        metrics["wer"],
        elapsed,
        " *best*" if improved else "",
    )
    for callback in state.callbacks:  # blank collapse, divergence (which may roll back before the checkpoint)
        callback.on_validation_end(state, metrics, improved)
    run.checkpoint("last.ckpt")
    if improved:
        run.checkpoint("best.ckpt")
    if opts.alignment_samples and state.dist.is_main:
        folder = run.run_dir / "alignments" / name
        write_alignments(state.model, val_loader, alphabet, opts.alignment_samples, folder)
    patience = opts.early_stopping_patience
    return patience is not None and state.bad_epochs >= patience


@torch.no_grad()
def write_alignments(
    model: nn.Module, loader: Iterable[Batch], alphabet: Alphabet, count: int, folder: Path
) -> list[Path]:
    """Alignment pictures (:mod:`recognizer.plots`) of the first ``count`` samples of ``loader``.

    Written per validation when ``trainer.alignment_samples > 0``: watching the same lines epoch
    after epoch shows blank collapse or frames running out long before the CER says why.
    """
    from recognizer.plots import align_sample  # matplotlib: imported only when pictures are asked for

    written: list[Path] = []
    for batch in loader:
        for i in range(len(batch)):
            if len(written) == count:
                return written
            name = re.sub(r"\.(png|jpe?g|tiff?|bmp|npy|wav|flac|ogg|mp3)$", "", batch.ids[i], flags=re.IGNORECASE)
            name = re.sub(r"[^\w.-]+", "_", name).strip("_") or f"sample_{len(written)}"
            x = batch.inputs[i, ..., : int(batch.input_lengths[i])]
            written.append(align_sample(model, x, alphabet, batch.texts[i], folder / f"{name}.png"))
    return written
