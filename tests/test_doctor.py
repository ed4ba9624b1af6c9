"""recognizer-doctor: a healthy config passes; each broken one fails with its named verdicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import DictConfig

from recognizer.doctor import (
    DoctorOptions,
    diagnose,
    histogram,
    input_verdicts,
    render_markdown,
    run_doctor,
)
from recognizer.models import CRNN
from tests.conftest import compose_config
from tests.test_train import run_cli


def doctor_cfg(data_root: Path, out: Path, *extra: str) -> DictConfig:
    return compose_config(
        "doctor",
        [
            f"data.root={data_root}/digit_lines",
            "data.num_train=96",
            "data.num_val=24",
            "data.num_test=24",
            "data.batch_size=16",
            "trainer.device=cpu",
            "doctor.dry_run_steps=3",
            f"paths.output_dir={out}",
            *extra,
        ],
    )


def severity(report, code: str) -> str:
    return next(v.severity for v in report.verdicts if v.code == code)


def test_embedded_data_passes_and_writes_the_reports(data_root: Path, tmp_path: Path) -> None:
    report = run_doctor(doctor_cfg(data_root, tmp_path))
    assert report.blocking == []
    expected = {
        "head_size",
        "labels_too_long",
        "empty_labels",
        "unknown_symbols",
        "non_finite_inputs",
        "unreadable_inputs",
        "inputs_not_normalised",
        "lr_too_high",
        "exploding_layer",
        "vanishing_layer",
        "fp16_overflow",
    }
    assert report.codes("ok") == expected
    saved = json.loads((tmp_path / "doctor.json").read_text())
    assert saved["passed"] is True and len(saved["dry_run"]) == 3
    assert sum(saved["histograms"]["label_length"]["counts"]) == 96
    assert saved["layers"]["head"]["grad_norm"] > 0 and saved["inputs"]["input_max"] <= 1.0
    assert (tmp_path / "doctor.md").read_text().startswith("# recognizer-doctor: PASS")


def test_head_one_short_and_labels_too_long_fail_with_those_verdicts(data_root: Path, tmp_path: Path) -> None:
    cfg = doctor_cfg(data_root, tmp_path, "doctor.num_classes=10", "stability.max_label_length=3")
    report = run_doctor(cfg)
    assert report.codes("blocking") == {"head_size", "ids_out_of_range", "labels_too_long"}
    head = next(v for v in report.verdicts if v.code == "head_size")
    assert "predicts 10 classes but the alphabet needs 11" in head.evidence and "off by -1" in head.evidence
    too_long = next(v for v in report.verdicts if v.code == "labels_too_long")
    assert too_long.evidence.startswith("train: too_long × ") and "symbols > 3" in too_long.evidence
    assert "shorter labels" in too_long.fix
    assert report.dry_run == []  # no dry run with a head that cannot match the labels
    assert "| blocking | head_size |" in (tmp_path / "doctor.md").read_text()


def test_python_api_takes_a_hand_built_model(data_root: Path, tmp_path: Path) -> None:
    model = CRNN(num_classes=12, height=16, channels=(8,), pools=((2, 2),), rnn_hidden=8)
    report = diagnose(doctor_cfg(data_root, tmp_path), model=model)
    assert report.codes("blocking") == {"head_size"}  # one class too many: no id out of range
    assert report.model["num_classes"] == 12 and report.model["alphabet_classes"] == 11


def test_infeasible_geometry_is_labels_too_long(data_root: Path, tmp_path: Path) -> None:
    report = diagnose(doctor_cfg(data_root, tmp_path, "model.pools=[[2,4],[2,4],[2,1]]"))
    verdict = next(v for v in report.verdicts if v.code == "labels_too_long")
    assert verdict.severity == "blocking" and "below_ratio" in verdict.evidence


def test_drop_policy_turns_data_verdicts_into_warnings(data_root: Path, tmp_path: Path) -> None:
    report = diagnose(doctor_cfg(data_root, tmp_path, "stability.audit_policy=drop", "stability.max_label_length=3"))
    assert severity(report, "labels_too_long") == "warning"
    kept = report.audit[0]["kept"]
    assert 0 < kept < 96 and report.blocking == []
    assert len(report.dry_run) == min(3, math.ceil(kept / 16))  # the dry run uses the kept samples only


def test_divergent_learning_rate_is_blocking_and_localised(data_root: Path, tmp_path: Path) -> None:
    report = diagnose(doctor_cfg(data_root, tmp_path, "optimizer.lr=1e4", "trainer.grad_clip=0"))
    assert report.codes("blocking") == {"nonfinite_step", "lr_too_high"}
    failure = next(v for v in report.verdicts if v.code == "nonfinite_step")
    assert "localised by replay" in failure.evidence and "learning rate is too high" in failure.cause


def test_input_statistics_verdicts() -> None:
    opts = DoctorOptions()
    raw = {"input_min": 0.0, "input_max": 255.0, "input_mean": 60.0, "input_std": 80.0}
    (verdict,) = input_verdicts(raw, opts)
    assert verdict.severity == "warning" and verdict.evidence.endswith("|x| > 10")
    assert "scale inputs" in verdict.fix
    flat = {"input_min": 0.5, "input_max": 0.5, "input_mean": 0.5, "input_std": 0.0}
    assert input_verdicts(flat, opts)[0].evidence.endswith("the inputs are constant")


def test_histogram_bins_every_value_once() -> None:
    h = histogram([1.0, 2.0, 2.0, 3.0, 9.0], 4)
    assert h["counts"] == [3, 1, 0, 1] and h["edges"][0] == 1.0 and h["edges"][-1] == 9.0
    assert histogram([5.0, 5.0], 4) == {"edges": [5.0, 5.0], "counts": [2]}


def test_markdown_escapes_pipes(data_root: Path, tmp_path: Path) -> None:
    report = diagnose(doctor_cfg(data_root, tmp_path, "doctor.dry_run_steps=0"))
    report.verdicts[0].evidence = "a | b"
    assert "a \\| b" in render_markdown(report)


@pytest.mark.slow
def test_console_script_exit_codes(data_root: Path, tmp_path: Path) -> None:
    common = [
        f"data.root={data_root}/digit_lines",
        "data.num_train=96",
        "data.num_val=24",
        "data.num_test=24",
        "trainer.device=cpu",
        "doctor.dry_run_steps=2",
    ]
    healthy = run_cli("recognizer-doctor", *common, f"hydra.run.dir={tmp_path / 'ok'}", cwd=tmp_path)
    assert healthy.returncode == 0, healthy.stderr[-3000:]
    assert "result: PASS" in healthy.stdout and (tmp_path / "ok" / "doctor.md").is_file()
    broken = run_cli(
        "recognizer-doctor",
        *common,
        "doctor.num_classes=10",
        "stability.max_label_length=3",
        f"hydra.run.dir={tmp_path / 'broken'}",
        cwd=tmp_path,
    )
    assert broken.returncode == 1
    assert "[BLOCKING] head_size" in broken.stdout and "[BLOCKING] labels_too_long" in broken.stdout
    assert "result: FAIL (3 blocking" in broken.stdout
