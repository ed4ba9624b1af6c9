"""What a training job needs to know about the sweep it runs in.

- :func:`in_multirun` tells a job of a ``-m`` sweep from a single run.
- :func:`record_failure` writes ``failure.json`` (cause, step) into a diverged job's directory, so
  the sweep report can show why it failed while the sweep goes on.
- The ``sweep_group`` resolver names the sweep (``${sweep_group:}`` in ``recognizer/conf/logger/wandb.yaml``),
  so all jobs of one sweep share a wandb group; it is ``null`` in a single run and in the compose API.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

#: The metric a diverged job returns to the sweeper: it ranks last under minimisation.
DIVERGED_METRIC = math.inf
FAILURE_FILE = "failure.json"
_STEP = re.compile(r"(?:non-finite step|diverged at step) (\d+)")  # the guard's and the divergence monitor's
_GROUP_MAX_CHARS = 128  # wandb's limit on a group name


def in_multirun() -> bool:
    """True inside a job of a Hydra ``-m`` sweep; False in a single run or outside Hydra."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group() -> str | None:
    """The sweep directory as a wandb group name in a ``-m`` job, else ``None``.

    Example: ``outputs/htr_digits_crnn/multiruns/2026-11-25_02-10-00`` for every job of that sweep.
    """
    if not in_multirun():
        return None
    name = Path(HydraConfig.get().sweep.dir).as_posix().removeprefix("./")
    return name[-_GROUP_MAX_CHARS:]


def register_resolvers() -> None:
    """Make ``${sweep_group:}`` available to configs (idempotent)."""
    if not OmegaConf.has_resolver("sweep_group"):
        OmegaConf.register_new_resolver("sweep_group", sweep_group)


def failed_step(error: BaseException) -> int | None:
    """The step named in a :class:`~recognizer.stability.guard.NonFiniteStepError` message, if any."""
    match = _STEP.search(str(error))
    return int(match.group(1)) if match else None


def record_failure(error: BaseException, run_dir: str | Path) -> dict[str, Any]:
    """Write ``run_dir/failure.json`` describing why a job stopped; return what was written.

    Args:
        error: the exception that ended training.
        run_dir: the job's output directory.
    """
    failure = {
        "status": "diverged",
        "type": type(error).__name__,
        "step": failed_step(error),
        "message": str(error),
    }
    path = Path(run_dir) / FAILURE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(failure, indent=2) + "\n", encoding="utf-8")
    log.error("job diverged at step %s; cause written to %s; the sweep goes on", failure["step"], path)
    return failure


class MakeSweepDir(Callback):
    """Hydra callback: create the sweep directory before the sweeper starts.

    The Optuna sweeper opens its SQLite storage (``<sweep dir>/optuna.db``) before the launcher
    creates the directory; without this, SQLite fails with "unable to open database file".
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)


register_resolvers()
