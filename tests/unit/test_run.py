"""``build_run``: the one setup train, doctor and lr-find share."""

from __future__ import annotations

from pathlib import Path

import pytest

from recognizer.alphabet import Alphabet
from recognizer.run import build_run
from recognizer.stability.audit import AuditError
from recognizer.stability.options import StabilityOptions
from tests.conftest import compose_config, tiny_overrides


def test_build_run_reads_audits_and_places_what_training_needs(data_root: Path, tmp_path: Path) -> None:
    run = build_run(compose_config("train", tiny_overrides(data_root, tmp_path)))
    assert set(run.datasets) == set(run.reports) == {"train", "val", "test"}
    assert run.model.num_classes == run.alphabet.num_classes == len(run.alphabet) + 1  # blank 0, C = charset + 1
    assert [len(run.reports[s].kept) for s in ("train", "val", "test")] == [96, 24, 24]
    assert run.precision is not None and run.precision.device.type == "cpu" and run.device.type == "cpu"
    loader, sampler = run.train_loader()
    assert len(sampler) == 6 and sum(len(b) for b in loader) == 96  # 96 lines, batches of 16
    assert sum(len(b) for b in run.eval_loader("val")) == 24
    assert isinstance(run.stability, StabilityOptions) and run.stability.audit_policy == "error"


def test_build_run_reads_only_the_splits_asked_for_and_takes_a_chosen_alphabet(data_root: Path, tmp_path: Path) -> None:
    chosen = Alphabet(list("0123456789x"))  # one symbol more than the data has: the head follows it
    run = build_run(
        compose_config("train", tiny_overrides(data_root, tmp_path)), splits=["train"], alphabet=lambda d, t: chosen
    )
    assert set(run.datasets) == {"train"} and run.alphabet is chosen and run.model.num_classes == 12


def test_the_doctor_builds_a_wrong_head_and_collects_what_training_refuses(data_root: Path, tmp_path: Path) -> None:
    cfg = compose_config("train", tiny_overrides(data_root, tmp_path, "stability.max_label_length=3"))
    with pytest.raises(AuditError, match=r"the train data breaks the CTC contract \(policy=error\)"):
        build_run(cfg, splits=["train"])  # labels of 3-8 digits: training stops before its first step
    collect = StabilityOptions.from_config(cfg.stability).replace(audit_policy="drop")
    run = build_run(cfg, splits=["train"], num_classes=5, audit=collect)  # doctor.num_classes: built, not checked
    assert run.model.num_classes == 5 and run.alphabet.num_classes == 11
    report = run.reports["train"]
    assert report.violations["too_long"] and len(report.kept) + len(report.violations["too_long"]) == 96


@pytest.mark.parametrize("policy", ["system", "lean", "fast"])
def test_build_run_hands_the_malloc_policy_to_the_allocator(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    calls: list[str] = []
    monkeypatch.setattr("recognizer.run.set_malloc_policy", calls.append)
    cfg = compose_config("train", tiny_overrides(data_root, tmp_path, f"trainer.malloc={policy}"))
    build_run(cfg, splits=["train"])
    assert calls == [policy]
