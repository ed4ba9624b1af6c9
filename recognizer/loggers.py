"""Metric sinks: a JSONL file in the run directory (always) and Weights & Biases (opt-in)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from recognizer.files import write_atomic

log = logging.getLogger(__name__)


class MetricLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_config(self, config: dict[str, Any]) -> None: ...
    def finish(self) -> None: ...


def rewind_jsonl(path: str | Path, step: int) -> int:
    """Cut a metrics file back to its records up to ``step``, for a run resumed from that step.

    After a crash (not a preemption) the file holds the records of steps the checkpoint does not:
    the resumed run logs those steps again. They are moved, not lost: appended to
    ``<name>.cut.jsonl`` beside the file (a line cut mid-write by the crash too), and a warning
    says how many. The kept file is replaced atomically. Returns the number of records moved.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept: list[str] = []
    cut: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            keep = int(json.loads(line)["step"]) <= step
        except (ValueError, KeyError, TypeError):  # a line the crash cut mid-write
            keep = False
        (kept if keep else cut).append(line)
    if not cut:
        return 0
    side = path.with_name(f"{path.stem}.cut.jsonl")
    with side.open("a", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in cut)
        f.flush()
        os.fsync(f.fileno())
    write_atomic(path, "".join(line + "\n" for line in kept).encode("utf-8"))
    log.warning(
        "resuming at step %d: moved %d record(s) of %s written after that checkpoint (before a crash) to %s; "
        "the resumed run logs those steps again",
        step,
        len(cut),
        path.name,
        side.name,
    )
    return len(cut)


class JsonlLogger:
    """Appends one JSON object per call to ``path`` (a resumed run appends to the same file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()

    def log_config(self, config: dict[str, Any]) -> None:
        pass  # the resolved config is saved by Hydra in .hydra/config.yaml

    def finish(self) -> None:
        self._file.close()


class WandbLogger:
    """Weights & Biases run. ``mode`` is ``online``, ``offline`` (sync later) or ``disabled``.

    A resumed training continues the wandb run it started (one curve, not one run per restart): the
    run's id is kept in ``save_dir/wandb-run-id`` and passed back to wandb with ``resume="allow"``.
    Steps logged again after a crash carry the values logged before it (a resumed run repeats them
    exactly), so wandb's refusal to log a step twice loses nothing.

    Args:
        project: wandb project.
        mode: ``online`` | ``offline`` | ``disabled``.
        name: run name (default: wandb's).
        group: groups runs, e.g. the jobs of one sweep.
        tags: run tags.
        save_dir: folder for wandb's files and the run id (the run directory).
        resume: continue the run whose id ``save_dir`` holds (set by ``recognizer-train`` when it
            resumes from a checkpoint); without an id there, a new run.
    """

    ID_FILE = "wandb-run-id"

    def __init__(
        self,
        project: str,
        mode: str = "online",
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        save_dir: str | None = None,
        resume: bool = False,
    ) -> None:
        import wandb

        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"wandb mode must be online, offline or disabled, got {mode!r}")
        id_file = Path(save_dir or ".") / self.ID_FILE
        run_id = id_file.read_text(encoding="utf-8").strip() if resume and id_file.is_file() else None
        self.run = wandb.init(
            project=project,
            mode=mode,  # type: ignore[arg-type]  # validated just above
            name=name,
            group=group,
            tags=list(tags or []),
            dir=save_dir,
            reinit="finish_previous",
            id=run_id,
            resume="allow" if run_id else None,
        )
        if run_id:
            log.info("wandb: continuing run %s (its id is kept in %s)", run_id, id_file)
        elif mode != "disabled":
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(self.run.id + "\n", encoding="utf-8")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def finish(self) -> None:
        self.run.finish()


class MultiLogger:
    """Fans out to several loggers."""

    def __init__(self, loggers: Sequence[MetricLogger]) -> None:
        self.loggers = list(loggers)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.log_metrics(metrics, step)

    def log_config(self, config: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_config(config)

    def finish(self) -> None:
        for lg in self.loggers:
            lg.finish()
