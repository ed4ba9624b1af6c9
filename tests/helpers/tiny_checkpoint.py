"""A tiny trained checkpoint shared by the decoding, transcription, export and alignment tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recognizer.train import train
from tests.conftest import compose_config, tiny_overrides


def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """Train the tiny recipe once per session (a few seconds) and return its ``best.ckpt``."""
    out = tmp_path_factory.getbasetemp() / "tiny_checkpoint"
    ckpt = out / "checkpoints" / "best.ckpt"
    if not ckpt.is_file():
        train(compose_config("train", tiny_overrides(data_root, out)))
    return ckpt


def sample_line(data_root: Path, split: str = "test", index: int = 0) -> tuple[Path, str]:
    """``(image path, transcript)`` of one generated digit line (after training has generated them)."""
    manifest = next(data_root.glob(f"digit_lines/*/{split}.tsv"))
    path, text = manifest.read_text().splitlines()[1 + index].split("\t")
    return manifest.parent / path, text


def untrained_audio_checkpoint(path: Path) -> Path:
    """A checkpoint of an untrained CRNN over 32 log-mel bins (``data=audio_manifest``), alphabet " ab"."""
    cfg = compose_config("train", ["data=audio_manifest", "data.n_mels=32", f"paths.output_dir={path.parent}"])
    torch.manual_seed(0)
    model = instantiate(cfg.model, num_classes=4)
    config = OmegaConf.to_container(cfg, resolve=True)
    torch.save({"alphabet": [" ", "a", "b"], "config": config, "model": model.state_dict()}, path)
    return path


def write_audio(folder: Path) -> tuple[Path, Path]:
    """``a.wav`` (1 s tone at 8 kHz, resampled on load) and ``b.flac`` (0.25 s of noise at 16 kHz)."""
    t = np.arange(8000) / 8000
    sf.write(folder / "a.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000)
    noise = 0.1 * np.random.default_rng(0).standard_normal(4000).astype(np.float32)
    sf.write(folder / "b.flac", noise, 16000)
    return folder / "a.wav", folder / "b.flac"
