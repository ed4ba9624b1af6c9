"""Metric sinks: a JSONL file in the run directory (always) and Weights & Biases (opt-in)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class MetricLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_config(self, config: dict[str, Any]) -> None: ...
    def finish(self) -> None: ...


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

    Args:
        project: wandb project.
        mode: ``online`` | ``offline`` | ``disabled``.
        name: run name (default: wandb's).
        group: groups runs, e.g. the jobs of one sweep.
        tags: run tags.
        save_dir: folder for wandb's files (the run directory).
    """

    def __init__(
        self,
        project: str,
        mode: str = "online",
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        save_dir: str | None = None,
    ) -> None:
        import wandb

        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"wandb mode must be online, offline or disabled, got {mode!r}")
        self.run = wandb.init(
            project=project,
            mode=mode,  # type: ignore[arg-type]  # validated just above
            name=name,
            group=group,
            tags=list(tags or []),
            dir=save_dir,
            reinit="finish_previous",
        )

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
