"""Every split, the test split included, is audited before the first step; what each split lost is
counted in audit.json and metrics.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from recognizer.stability.audit import AuditError
from recognizer.train import train
from tests.conftest import compose_config
from tests.helpers.runs import lines_overrides, write_lines


def manifests(tmp_path: Path) -> tuple[Path, Path]:
    clean = write_lines(tmp_path / "lines", {"ok": "abc", "ok2": "cab", "ok3": "ba"})
    test = write_lines(tmp_path / "test", {"t1": "abc", "t2": "ab", "t3": "abd"})  # d: never seen in training
    return clean, test


def test_a_bad_test_line_fails_before_the_first_step(tmp_path: Path) -> None:
    clean, test = manifests(tmp_path)
    out = tmp_path / "run"
    with pytest.raises(AuditError, match=r"the test data breaks the CTC contract \(policy=error\):\n") as e:
        train(compose_config("train", lines_overrides(clean, out, f"data.test={test}")))
    assert "unknown_symbol: 1 — e.g. t3.png: 'd' in 'abd'" in str(e.value)
    assert not (out / "checkpoints").exists()  # nothing trained: no step, no checkpoint
    assert not (out / "metrics.jsonl").exists() or "train/loss" not in (out / "metrics.jsonl").read_text()


def test_test_drops_are_counted_in_metrics_and_audit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clean, test = manifests(tmp_path)
    out = tmp_path / "run"
    drop = ["stability.audit_policy=drop", "stability.unknown=drop", f"data.test={test}"]
    with caplog.at_level(logging.INFO, logger="recognizer.stability.audit"):
        metrics = train(compose_config("train", lines_overrides(clean, out, *drop)))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    assert {k: saved[k] for k in saved if "dropped" in k} == {
        "train/dropped": 0,
        "val/dropped": 0,
        "test/dropped": 1,
        "test/dropped/unknown_symbol": 1,
    }
    reports = {r["split"]: r for r in json.loads((out / "audit.json").read_text())}
    assert list(reports) == ["train", "val", "test"]
    assert reports["test"]["dropped"] == 1 and reports["test"]["violations"]["unknown_symbol"]["count"] == 1
    rows = (out / "predictions_test.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[0] for r in rows] == ["t1.png", "t2.png"]
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning.message.startswith("audit[test]: 3 samples, 2 pass, 1 fail the checks")
