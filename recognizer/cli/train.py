"""recognizer-train: train a CTC recognizer (:func:`recognizer.train.train`).

Examples::

    recognizer-train                                     # CRNN on embedded handwritten digit lines
    recognizer-train experiment=htr_digits_crnn          # the documented recipe
    recognizer-train data=lines data.train=data/iam/train.tsv data.val=data/iam/val.tsv data.height=64
    recognizer-train optimizer.lr=1e-3 trainer.max_epochs=5 logger=wandb logger.wandb.mode=offline
    recognizer-train hydra.run.dir=outputs/myrun trainer.resume=auto   # continue an interrupted run
    recognizer-train -m optimizer.lr=1e-3,3e-4,1e-4      # a sweep; each job returns val/cer
    recognizer-train trainer.bucketing=true              # batches of similar widths: less padding
    recognizer-train experiment=asr_fsdd_conformer trainer.init_from=path/to/best.ckpt  # fine-tune: weights only
    torchrun --standalone --nproc_per_node=2 $(which recognizer-train) hydra.run.dir=outputs/ddp   # DDP

On SIGTERM or SIGUSR1 (e.g. SLURM's ``--signal=USR1@120`` or a preemption) training finishes the
current step, writes ``checkpoints/last.ckpt`` and exits with ``trainer.preempt_exit_code`` (0 by
default; Ctrl-C: 130); run the same command with ``trainer.resume=auto`` (e.g. after a requeue) to continue.
"""

from __future__ import annotations

import shlex
import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from recognizer import CONFIG_DIR


def main() -> None:
    """The ``recognizer-train`` console script: :func:`hydra_main`, known user errors as a message and an
    exit code instead of a traceback (:mod:`recognizer.errors`; ``HYDRA_FULL_ERROR=1`` shows it)."""
    from recognizer.errors import run_hydra_main
    from recognizer.sweeps import register_resolvers

    register_resolvers()  # ${sweep_group:} of logger/wandb.yaml, for --cfg job --resolve too
    run_hydra_main("recognizer-train", hydra_main)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    """Train and return ``metrics[cfg.optimized_metric]`` for sweepers.

    In a ``-m`` sweep a diverged job does not end the sweep: its cause goes to ``failure.json`` and it
    returns ``inf``, which ranks last. A single run re-raises, with the step and samples in the message
    (:func:`main` turns it into that message and exit code 5).
    A preempted run (SIGTERM/SIGUSR1) exits with ``trainer.preempt_exit_code``, a sweep included.
    """
    from recognizer.engine.distributed import env_dist
    from recognizer.engine.loop import Preempted
    from recognizer.stability.guard import NonFiniteStepError
    from recognizer.sweeps import DIVERGED_METRIC, in_multirun, record_failure
    from recognizer.train import train

    try:
        metrics = train(cfg)
    except Preempted as stopped:  # fit logged where it stopped
        if env_dist().is_main:
            print(f"to continue: {resume_command(cfg)}", file=sys.stderr)
        raise SystemExit(130 if stopped.signum == signal.SIGINT else cfg.trainer.preempt_exit_code) from None
    except NonFiniteStepError as error:
        if not in_multirun():
            raise
        record_failure(error, cfg.paths.output_dir)
        return DIVERGED_METRIC
    if env_dist().is_main:
        print(
            f"val/cer={metrics['val/cer']:.4f} val/wer={metrics['val/wer']:.4f}"
            + (f" test/cer={metrics['test/cer']:.4f}" if "test/cer" in metrics else "")
        )
    return metrics[cfg.optimized_metric]


def resume_command(cfg: DictConfig) -> str:
    """The command line that continues this run: its overrides, its directory and ``trainer.resume=auto``."""
    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # called outside @hydra.main
        overrides = []
    kept = [o for o in overrides if not o.startswith(("trainer.resume=", "hydra.run.dir="))]
    return shlex.join(["recognizer-train", *kept, f"hydra.run.dir={cfg.paths.output_dir}", "trainer.resume=auto"])


if __name__ == "__main__":
    main()
