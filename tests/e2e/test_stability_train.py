"""The stability options through ``recognizer-train``'s config: telemetry, anomaly mode, divergence."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import recognizer.engine.loop as loop
from recognizer.stability.guard import NonFiniteStepError
from recognizer.stability.localize import load_nonfinite
from recognizer.train import train
from tests.conftest import compose_config, tiny_overrides


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_per_step_grad_norm_anomaly_switch_and_blank_metrics(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    anomaly = []
    step = loop.train_step

    def spy(*args, **kwargs):
        anomaly.append(torch.is_anomaly_enabled())
        return step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", spy)
    out = tmp_path / "run"
    extra = ["trainer.max_epochs=1", "trainer.log_every_n_steps=4", "stability.grad_norm_every_step=true"]
    metrics = train(compose_config("train", tiny_overrides(data_root, out, *extra, "stability.detect_anomaly=true")))
    logged = rows(out)
    assert sorted(r["step"] for r in logged if "train/grad_norm" in r) == list(range(1, 7))
    assert [r["step"] for r in logged if "train/lr" in r] == [4]  # the full record keeps its interval
    assert anomaly == [True] * 6 and not torch.is_anomaly_enabled()
    assert 0.0 <= metrics["val/blank"] <= 1.0 and 0.0 <= metrics["val/empty"] <= 1.0


def test_divergence_in_training_is_named_saved_and_localised(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    extra = ["optimizer.lr=1e6", "trainer.grad_clip=0", "scheduler.warmup_steps=0", "trainer.max_epochs=3"]
    with pytest.raises(
        NonFiniteStepError, match=r"non-finite step (\d+): .*localised by replay: .*batch and state saved"
    ) as e:
        train(compose_config("train", tiny_overrides(data_root, out, *extra)))
    step = int(re.search(r"non-finite step (\d+)", str(e.value)).group(1))
    saved, batch = load_nonfinite(out / "nonfinite" / f"step_{step}.pt")
    assert saved["step"] == step and len(batch.ids) == 16
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
