"""Shared fixtures: a composed, shrunken training config on a tiny embedded data set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from recognizer import CONFIG_DIR

os.environ.setdefault("WANDB_MODE", "offline")  # never touch the network
os.environ.setdefault("WANDB_SILENT", "true")


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated tiny digit-lines data set shared by the session's tests."""
    return tmp_path_factory.mktemp("data")


def tiny_overrides(data_root: Path, out: Path, *extra: str) -> list[str]:
    """Overrides that make a full training run take a few seconds on CPU."""
    return [
        f"data.root={data_root}/digit_lines",
        "data.num_train=96",
        "data.num_val=24",
        "data.num_test=24",
        "data.batch_size=16",
        "trainer.max_epochs=2",
        "trainer.device=cpu",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
        "scheduler.warmup_steps=2",
        f"paths.output_dir={out}",
        *extra,
    ]


def tiny_speech_overrides(data: str, train: Path, val: Path, out: Path, *extra: str) -> list[str]:
    """A one-epoch run of a 1-layer, 16-wide Conformer on ``data`` (a config name) in seconds on CPU."""
    return [
        f"data={data}",
        f"data.train={train}",
        f"data.val={val}",
        "data.num_workers=0",
        "data.batch_size=2",
        "model=conformer",
        "model.d_model=16",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.ffn_dim=32",
        "model.subsampling_channels=4",
        "trainer.max_epochs=1",
        "trainer.device=cpu",
        "trainer.progress_bar=false",
        "scheduler.warmup_steps=1",
        f"paths.output_dir={out}",
        *extra,
    ]


@pytest.fixture
def tiny_cfg(data_root: Path, tmp_path: Path) -> DictConfig:
    return compose_config("train", tiny_overrides(data_root, tmp_path / "run"))
