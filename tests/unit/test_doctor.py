"""recognizer-doctor: a healthy config passes; each broken one fails with its named verdicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig
from torch import nn

from recognizer.ctc import CTCLoss
from recognizer.doctor import (
    DoctorOptions,
    diagnose,
    dry_run,
    dynamics_verdicts,
    histogram,
    input_verdicts,
    render_markdown,
    run_doctor,
)
from recognizer.engine.precision import Precision
from recognizer.models import CRNN
from recognizer.stability.guard import NonFiniteGuard
from tests.conftest import compose_config
from tests.helpers.runs import run_cli
from tests.unit.engine.test_loop import NaNGradient, make_batch


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
    assert [a["split"] for a in saved["audit"]] == ["train", "val", "test"]  # as training audits them
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


class _Amplify(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad * 1e6


class LargeGradient(nn.Module):
    """Identity forward, gradient × 1e6 below it: large but finite gradients, as some real layers have."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Amplify.apply(x)


def fp16_dry_run(first: nn.Module, guard: NonFiniteGuard, init_scale: float = 2.0**110):
    """The doctor's dry run under an enabled (CPU) GradScaler on a tiny CRNN with ``first`` before its head.

    The scaler backs off by 2^-100 on an overflow: from 2^110 (where the × 1e6 gradients overflow
    float32) to 2^10 (where they do not), so a large gradient overflows at step 1 only.
    """
    torch.manual_seed(0)
    model = CRNN(num_classes=5, height=8, channels=(4,), pools=((2, 2),), rnn_hidden=8)
    model.head = nn.Sequential(first, model.head)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, backoff_factor=2.0**-100)
    precision = Precision("16-mixed", torch.device("cpu"), None, scaler)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = [make_batch([[1, 2], [3, 4]]) for _ in range(3)]
    steps, layers, failure = dry_run(model, batches, optimizer, precision, CTCLoss(), 1.0, guard)
    return steps, dynamics_verdicts(steps, layers, 1e-3, precision, DoctorOptions()) if failure is None else failure


def test_a_first_step_fp16_overflow_is_normal_as_in_training() -> None:
    steps, verdicts = fp16_dry_run(LargeGradient(), NonFiniteGuard())
    assert [s.get("overflow", False) for s in steps] == [True, False, False]
    assert not any(v.severity == "blocking" for v in verdicts)
    fp16 = next(v for v in verdicts if v.code == "fp16_overflow")
    assert fp16.evidence.endswith("; GradScaler skipped overflowing step(s) [1], as training does")


def test_an_overflow_the_loop_calls_a_fault_is_blocking() -> None:
    _, failure = fp16_dry_run(NaNGradient(), NonFiniteGuard(max_consecutive_overflows=1), init_scale=16.0)
    assert failure.code == "nonfinite_step" and failure.severity == "blocking"
    assert failure.evidence.startswith("dry-run step 2: loss=")
    assert "2 fp16 gradient overflows in a row exceed stability.max_consecutive_overflows=1" in failure.evidence
    assert "module 'head.0' (NaNGradient)" in failure.evidence
