"""Shared by the tests that train or run a console script: a user line manifest and its overrides, a run's
logged losses, a console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def step_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def write_lines(folder: Path, texts: dict[str, str], width: int = 64) -> Path:
    """A TSV manifest with white PNG lines carrying a black bar (enough for the pipeline)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, text in texts.items():
        pixels = np.full((32, width), 255, np.uint8)
        pixels[8:24, 4 : width - 4] = 0
        Image.fromarray(pixels).save(folder / f"{name}.png")
        rows.append(f"{name}.png\t{text}")
    manifest = folder / "lines.tsv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def lines_overrides(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [
        "data=lines",
        f"data.train={manifest}",
        f"data.val={manifest}",
        "data.height=32",
        "data.num_workers=0",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "trainer.device=cpu",
        "trainer.progress_bar=false",
        "scheduler.warmup_steps=1",
        f"paths.output_dir={out}",
        *extra,
    ]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    bin_dir = Path(sys.executable).parent
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
