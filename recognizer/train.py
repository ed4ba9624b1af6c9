"""Train a CTC recognizer: audit the data, train, then evaluate the best checkpoint (:func:`train`).

The command is ``recognizer-train`` (:mod:`recognizer.cli.train`: examples, exit codes, sweeps).

On SIGTERM or SIGUSR1 (e.g. SLURM's ``--signal=USR1@120`` or a preemption) training finishes the
current step, writes ``checkpoints/last.ckpt`` and raises :class:`recognizer.engine.loop.Preempted`;
the command exits with ``trainer.preempt_exit_code`` (0 by default); run it again with
``trainer.resume=auto`` (e.g. after a requeue) to continue.

Under ``torchrun`` every rank runs this same function (see :mod:`recognizer.engine.distributed`):
rank 0 prepares the data first, writes every file and evaluates at the end; the others train on
their shards and take part in validation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from recognizer.alphabet import Alphabet
from recognizer.checkpoint import CheckpointError, CheckpointNotFoundError, load_checkpoint, save_checkpoint
from recognizer.ctc import CTCLoss
from recognizer.engine import distributed, rundir
from recognizer.engine.ema import WeightAverage
from recognizer.engine.finetune import BackboneFreeze, init_alphabet, init_weights, train_subset
from recognizer.engine.loop import TrainerOptions, TrainState, evaluate_loader, fit
from recognizer.engine.memory import HeapTrim
from recognizer.engine.seeding import seed_everything
from recognizer.loggers import JsonlLogger, MultiLogger, rewind_jsonl
from recognizer.run import AlphabetChoice, Run, build_run, run_precision
from recognizer.score import score, suspect_summary, write_predictions
from recognizer.stability.audit import AuditReport, write_reports
from recognizer.stability.runtime import attach_stability, make_ctc, make_guard
from recognizer.sweeps import register_resolvers

log = logging.getLogger(__name__)


def resume_path(resume: str | None, run_dir: Path) -> Path | None:
    """``None`` → start fresh; ``auto`` → ``run_dir/checkpoints/last.ckpt`` if it exists; else a path."""
    if resume is None:
        return None
    if resume == "auto":
        last = run_dir / "checkpoints" / "last.ckpt"
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointNotFoundError(f"trainer.resume={resume}: no such checkpoint")
    return path


def order_changes(saved: dict[str, Any], cfg: DictConfig) -> list[str]:
    """The settings that fix the batch order and differ from the checkpoint's run, as ``key: old → new``.

    Args:
        saved: the resolved config stored in the checkpoint (older ones lack the bucketing keys:
            they trained without bucketing).
        cfg: this run's config.
    """
    trainer = saved["trainer"]
    before = {
        "seed": saved["seed"],
        "data.batch_size": saved["data"]["batch_size"],
        "trainer.bucketing": trainer.get("bucketing", False),
        "trainer.bucket_pool_batches": trainer.get("bucket_pool_batches", 50),
    }
    now = {
        "seed": cfg.seed,
        "data.batch_size": cfg.data.batch_size,
        "trainer.bucketing": cfg.trainer.bucketing,
        "trainer.bucket_pool_batches": cfg.trainer.bucket_pool_batches,
    }
    return [f"{k}: {before[k]} → {now[k]}" for k in now if before[k] != now[k]]


def saved_world_size(ckpt: dict[str, Any]) -> int:
    """The number of processes that wrote ``ckpt`` (older checkpoints say it only through their RNG states)."""
    if "world_size" in ckpt:
        return int(ckpt["world_size"])
    return len(ckpt.get("rng_per_rank") or [None])


def check_world_size(ckpt: dict[str, Any], world_size: int, path: Path) -> None:
    """Refuse to resume with another number of processes than the run that wrote ``ckpt``.

    An optimizer step consumes one batch per process, so the number of steps per epoch, the LR
    schedule's length (``max_epochs`` × batches per process) and the position inside the epoch all
    depend on the world size: continuing with another one would silently stretch or cut the schedule.
    """
    saved = saved_world_size(ckpt)
    if saved != world_size:
        raise CheckpointError(
            f"cannot resume from {path}: it was written by {saved} process(es), this run has {world_size}. "
            "Steps per epoch, the LR schedule and the position in the epoch depend on the number of processes: "
            f"resume with {saved} process(es) in total (nodes × torchrun --nproc_per_node; no torchrun for 1), "
            "or start a new run in another output directory"
        )


def train(cfg: DictConfig) -> dict[str, float]:
    """Audit the data, train, then evaluate the best checkpoint. Returns the final metrics.

    Under torchrun (``WORLD_SIZE`` > 1) this joins the process group and leaves it at the end.
    """
    register_resolvers()  # ${sweep_group:} (logger/wandb.yaml) resolves outside the command too
    dist = distributed.init_distributed(cfg.trainer.device, timeout_s=cfg.trainer.dist_timeout_s)
    try:
        metrics = _train(cfg, dist)
        dist.barrier()  # tear down together: gloo aborts a rank whose peer left first
        return metrics
    finally:
        distributed.shutdown(dist)


def _train(cfg: DictConfig, dist: distributed.Dist) -> dict[str, float]:
    # Hydra names each rank's run dir by its own clock: all ranks use rank 0's.
    run_dir = Path(dist.broadcast(str(cfg.paths.output_dir)))
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    # this command's .hydra files as Hydra wrote them, before a refused command can put others back
    hydra_files = rundir.hydra_files(run_dir) if dist.is_main else {}
    with rundir.run_lock(run_dir) if dist.is_main else contextlib.nullcontext():  # one run per directory
        return _train_locked(cfg, dist, run_dir, hydra_files)


def _open_run(
    cfg: DictConfig, opts: TrainerOptions, run_dir: Path, dist: distributed.Dist, hydra_files: dict[str, bytes]
) -> tuple[Any, Path | None]:
    """The checkpoint to resume (or None for a fresh run), checked before anything is read or written.

    A resume needs the same number of processes and the same training settings as the run that wrote the
    checkpoint, its precision compared once resolved (:mod:`rundir`). A fresh run, and a run continued from
    another directory's checkpoint, need a directory without another run's checkpoints; the continued one
    takes that run's best checkpoint along (:func:`_adopt_best`). A refused command changes nothing; an
    accepted one makes its ``.hydra`` files the run's.
    """
    ckpt_path = resume_path(opts.resume, run_dir)
    if ckpt_path is None:
        if dist.is_main:
            rundir.check_fresh(run_dir, opts.overwrite)
            rundir.accept_hydra(run_dir, hydra_files)
        return None, None
    ckpt = load_checkpoint(ckpt_path)  # on CPU: load_state_dict moves weights and optimizer state
    check_world_size(ckpt, dist.world_size, ckpt_path)  # before the data is read and audited
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    changes = rundir.training_changes(ckpt["config"], config, list(opts.resume_allow))
    if not any(c.startswith("trainer.precision:") for c in changes):  # the setting itself changed: said once
        changes += _precision_changes(ckpt, cfg, opts, dist)
    if changes:
        raise rundir.refuse_changes(changes, ckpt_path, run_dir, ckpt["config"])
    if dist.is_main:
        if _continued_elsewhere(ckpt_path, run_dir) and not _adopted_before(ckpt, run_dir):
            rundir.check_fresh(run_dir, opts.overwrite)  # continued here: this directory's own checkpoints stay
            _adopt_best(ckpt, ckpt_path, run_dir)
        rundir.accept_hydra(run_dir, hydra_files)
    return ckpt, ckpt_path


def _precision_changes(
    ckpt: dict[str, Any], cfg: DictConfig, opts: TrainerOptions, dist: distributed.Dist
) -> list[str]:
    """The precision change, if any: ``trainer.precision=auto`` resolves by device (fp16 with a GradScaler on
    CUDA, fp32 or bf16 on CPU), so equal settings can train otherwise; allowed by
    ``trainer.resume_allow=[trainer.precision]``. Older checkpoints do not record it: not compared."""
    saved = ckpt.get("precision")
    now = run_precision(opts, dist, get_class(cfg.model._target_))
    if saved is None or saved == now.name:
        return []
    described = f"{now.name} (trainer.precision={opts.precision} on {now.device.type})"
    allowed = list(opts.resume_allow)
    return rundir.training_changes({"trainer": {"precision": saved}}, {"trainer": {"precision": described}}, allowed)


def _adopt_best(ckpt: dict[str, Any], ckpt_path: Path, run_dir: Path) -> None:
    """Copy the best checkpoint of the run ``ckpt`` continues into ``run_dir``: until this run improves on it,
    it is this run's best, also after an interruption here (a resume then starts from this directory).

    Only the copy whose best val metric is the continued state's is taken: that directory's run may have
    gone on past the checkpoint continued here and written a later best.
    """
    source = ckpt_path.parent / "best.ckpt"
    if not source.is_file():
        return
    best = load_checkpoint(source)
    if not _same_best(best, ckpt):
        log.warning("%s is not the best of the state continued here (a later part of that run): not taken", source)
        return
    target = run_dir / "checkpoints" / "best.ckpt"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(best, target)
    log.info("continued from %s: its best checkpoint copied to %s", ckpt_path, target)


def _same_best(best: dict[str, Any], ckpt: dict[str, Any]) -> bool:
    """Whether ``best`` is the best checkpoint of the state ``ckpt`` holds (same run, epoch and val metric)."""
    return all(best.get(k) == ckpt.get(k) for k in ("run_id", "best_epoch", "best_metric"))


def _adopted_before(ckpt: dict[str, Any], run_dir: Path) -> bool:
    """Whether ``run_dir`` holds only the best checkpoint an earlier attempt of this continuation adopted (one that
    stopped before writing a checkpoint of its own: a refused audit, a crash): it is not another run's."""
    found = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    return [p.name for p in found] == ["best.ckpt"] and _same_best(load_checkpoint(found[0]), ckpt)


def _continued_elsewhere(ckpt_path: Path, run_dir: Path) -> bool:
    """Whether ``ckpt_path`` is another directory's checkpoint, not one of ``run_dir``'s own."""
    return ckpt_path.resolve().parent != (run_dir / "checkpoints").resolve()


def _train_locked(
    cfg: DictConfig, dist: distributed.Dist, run_dir: Path, hydra_files: dict[str, bytes]
) -> dict[str, float]:
    distributed.quiet_other_ranks(dist)  # one voice: rank 0 logs progress
    seed_everything(cfg.seed + dist.rank)  # own dropout/augmentation stream per rank; DDP syncs the weights
    opts: TrainerOptions = instantiate(cfg.trainer)
    ckpt, ckpt_path = _open_run(cfg, opts, run_dir, dist, hydra_files)
    # the checkpoints this run may report: its own (older checkpoints carry no id: None, as they do)
    run_id = ckpt.get("run_id") if ckpt is not None else uuid.uuid4().hex
    init = load_checkpoint(opts.init_from) if opts.init_from and ckpt is None else None
    if opts.init_from and ckpt is not None:
        log.info("resuming from %s: trainer.init_from=%s is not applied again", ckpt_path, opts.init_from)
    run = build_run(cfg, dist, trainer=opts, alphabet=_alphabet_choice(opts, ckpt, init, cfg))
    initialised = ckpt.get("initialised") if ckpt is not None else None  # what the resumed run started from
    if init is not None and opts.init_from:
        initialised = init_weights(run.model, init, run.alphabet, opts.init_from)
    if dist.is_main:
        write_reports(list(run.reports.values()), run_dir)
    train_indices = train_subset(run.reports["train"].kept, opts.train_samples, cfg.seed)  # all, or a subset
    shard: dict[str, Any] = {"num_replicas": dist.world_size, "rank": dist.rank}
    train_loader, sampler = run.train_loader(train_indices, **shard)
    val_loader = run.eval_loader("val", **shard)
    state = _training_state(run, opts, dist, run_dir, total_steps=opts.max_epochs * len(sampler))
    if ckpt is not None and ckpt_path is not None:  # set together
        _resume(state, ckpt, ckpt_path, cfg)
    ctc = make_ctc(run.stability)
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    logger = _loggers(cfg, run_dir, dist, state.step if ckpt is not None else None)
    logger.log_config(config)
    # the character mapping's content, not its file name: eval and transcribe then need no file of this machine
    describe = {"config": config, "alphabet": run.alphabet.symbols, "char_map": run.data.char_map, "run_id": run_id}
    describe["initialised"] = initialised  # init_from: the checkpoint and the symbols kept, added, dropped
    try:
        stab = run.stability
        fit(
            state,
            sampler,
            train_loader,
            val_loader,
            ctc,
            run.alphabet,
            opts,
            run_dir,
            logger,
            describe,
            grad_norm_every_step=stab.grad_norm_every_step,
            detect_anomaly=stab.detect_anomaly,
            augment=run.data.train_augment,
        )
        compared = distributed.check_same_parameters(run.model, dist)
        if dist.enabled:
            log.info("parameters identical on all %d ranks (%d values compared)", dist.world_size, compared)
        metrics = None
        if dist.is_main:
            # the whole splits on rank 0
            whole_val = run.eval_loader("val") if dist.enabled else val_loader  # DDP: the train-time one is a shard
            loaders = {"val": whole_val, "test": run.eval_loader("test") if "test" in run.datasets else None}
            metrics = final_evaluation(state, run_dir, ctc, run.alphabet, loaders, run.reports, run_id)
            logger.log_metrics(metrics, state.step)
        metrics = dist.broadcast(metrics)
    finally:
        logger.finish()
    return metrics


def _alphabet_choice(
    opts: TrainerOptions, ckpt: dict[str, Any] | None, init: dict[str, Any] | None, cfg: DictConfig
) -> AlphabetChoice | None:
    """How this run chooses its alphabet: the resumed checkpoint's (its data is unchanged,
    :func:`rundir.training_changes`), the base model's merged with the data's (``trainer.init_alphabet``),
    or the data's (None)."""
    if ckpt is not None:
        return lambda data, train_set: Alphabet(ckpt["alphabet"])
    if init is not None and opts.init_from:
        base, with_unk = opts.init_from, cfg.stability.unknown == "unk"
        return lambda data, train_set: init_alphabet(
            init, base, train_set.texts, data.alphabet(), opts.init_alphabet, with_unk=with_unk
        )
    return None


def _training_state(
    run: Run, opts: TrainerOptions, dist: distributed.Dist, run_dir: Path, total_steps: int
) -> TrainState:
    """Optimizer, schedule, guard, DDP wrapper, weight average, backbone freeze and stability monitors."""
    model = run.model
    assert run.precision is not None
    optimizer = instantiate(run.cfg.optimizer)(params=model.parameters())
    scheduler = instantiate(run.cfg.scheduler)(optimizer=optimizer, total_steps=total_steps)
    state = TrainState(model, optimizer, scheduler, run.precision, make_guard(run.stability), dist=dist)
    wrapped = distributed.wrap(model, dist, run.device)
    if opts.ema_decay is not None:  # after the wrap: DDP has given every rank rank 0's initial weights
        state.ema = WeightAverage(model, opts.ema_decay)
    if opts.freeze_backbone_steps:
        if dist.enabled:  # DDP fixes the parameters that take gradients when it wraps the model
            raise ValueError("trainer.freeze_backbone_steps does not work under torchrun (DDP); run on one process")
        state.callbacks.append(BackboneFreeze(model, opts.freeze_backbone_steps))
    if opts.malloc == "fast":  # without it the heap's fragments grow the process without bound
        state.callbacks.append(HeapTrim())
    forward: Any = model if wrapped is None else wrapped
    if opts.compile:  # compile the DDP wrapper, not the other way round (DDP's recommended order)
        forward = torch.compile(forward)
    state.train_forward = None if forward is model else forward
    attach_stability(state, run.stability, run_dir if dist.is_main else run_dir / f"rank{dist.rank}")
    return state


def _resume(state: TrainState, ckpt: dict[str, Any], ckpt_path: Path, cfg: DictConfig) -> None:
    """Restore ``state`` from the checkpoint (checked by :func:`_open_run`); warn where the rest of the epoch
    cannot be the same batches."""
    state.load_state_dict(ckpt)
    changed = order_changes(ckpt["config"], cfg)
    if changed and state.batch_in_epoch:
        log.warning(
            "resuming mid-epoch (batch %d) with %s: the rest of this epoch is not what the interrupted run "
            "would have seen (some samples twice, some never); resume with the original values for an exact "
            "continuation",
            state.batch_in_epoch,
            ", ".join(changed),
        )
    log.info(
        "resumed from %s at step %d (epoch %d, batch %d)", ckpt_path, state.step, state.epoch + 1, state.batch_in_epoch
    )


def _loggers(cfg: DictConfig, run_dir: Path, dist: distributed.Dist, resumed_step: int | None) -> MultiLogger:
    """``metrics.jsonl`` and the configured trackers on rank 0 (the other ranks log nothing).

    ``resumed_step``: the step a resumed run continues from (None: a fresh run). After a crash the file
    runs ahead of the checkpoint, so it is cut back (no step twice); a tracker with a ``resume`` key
    continues its run.
    """
    if not dist.is_main:
        return MultiLogger([])
    if resumed_step is not None:
        rewind_jsonl(run_dir / "metrics.jsonl", resumed_step)
    trackers = (cfg.logger or {}).values()
    resume = resumed_step is not None
    return MultiLogger(
        [
            JsonlLogger(run_dir / "metrics.jsonl"),
            *(instantiate(n, **({"resume": True} if resume and "resume" in n else {})) for n in trackers),
        ]
    )


def final_evaluation(
    state: TrainState,
    run_dir: Path,
    ctc: CTCLoss,
    alphabet: Alphabet,
    loaders: dict[str, DataLoader | None],
    reports: dict[str, AuditReport],
    run_id: str | None = None,
) -> dict[str, float]:
    """Evaluate the best checkpoint on each split with a loader; write predictions and ``metrics.json``.

    Only a ``best.ckpt`` of this run (its ``run_id``; a run continued from another directory's checkpoint
    brings that one's along, :func:`_adopt_best`) is evaluated. Without one, the weight average or the last
    weights are.

    Args:
        loaders: split → loader over its audited samples (None: the split is not configured).
        reports: split → its audit report; what each split lost goes into the metrics as counts
            (``<split>/dropped``, ``<split>/dropped/<reason>``, ``<split>/filtered/<reason>``), so a
            score over fewer samples than the manifest lists says so.
    """
    best_path, best = run_dir / "checkpoints" / "best.ckpt", None
    if best_path.is_file():
        best = load_checkpoint(best_path, map_location=state.precision.device)
        if best.get("run_id") == run_id:
            log.info("final evaluation of %s", best_path)
        else:
            log.warning("%s was not written by this run: not evaluated", best_path)
            best = None
    if best is not None:
        state.model.load_state_dict(best["model"])
    elif state.ema is not None:
        state.model.load_state_dict(state.ema.module.state_dict())
    metrics: dict[str, float] = {}
    for split, loader in loaders.items():
        if loader is None:
            continue
        values, rows = evaluate_loader(state.model, loader, ctc, alphabet, state.precision, keep_predictions=True)
        write_predictions(rows, run_dir / f"predictions_{split}.tsv")
        if warning := suspect_summary(score(rows), split):
            log.warning("%s", warning)
        metrics |= {f"{split}/{k}": v for k, v in values.items()}
    for split, report in reports.items():
        metrics |= {f"{split}/{k}": n for k, n in report.counts().items()}
    metrics["train/steps"] = state.step
    metrics["train/time"] = state.train_time
    metrics["train/overflow_steps"] = state.guard.overflows  # fp16 overflows GradScaler skipped
    metrics["train/nonfinite_steps"] = state.guard.skipped  # non-finite faults skipped or rolled back
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    log.info("final: %s", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return metrics
