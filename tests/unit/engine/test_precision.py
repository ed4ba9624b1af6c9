"""trainer.precision=auto: fp16 + GradScaler on CUDA; on CPU bf16 only where the CPU computes it natively
and the model was measured faster in it."""

from __future__ import annotations

import logging

import pytest
import torch

from recognizer.engine import precision as prec
from recognizer.engine.precision import resolve_precision
from recognizer.models import CRNN, ConformerCTC

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("capabilities", "expected", "said"),
    [
        ({"avx512_bf16": True, "amx_bf16": False}, "bf16-mixed", "bf16-mixed (native bf16: avx512_bf16"),
        ({"avx512_bf16": False, "amx_bf16": True}, "bf16-mixed", "bf16-mixed (native bf16: amx_bf16"),
        ({"avx512_f": True, "avx512_bw": True, "avx2": True}, "32", "fp32 (no native bf16 on this CPU"),
        ({"architecture": "arm64", "bf16": True, "sve_bf16": True}, "32", "fp32 (no native bf16"),  # not measured
    ],
)
def test_auto_on_cpu_picks_bf16_for_the_conformer_only_where_it_is_native(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capabilities: dict, expected: str, said: str
) -> None:
    monkeypatch.setattr(prec, "cpu_capabilities", lambda: capabilities)
    with caplog.at_level(logging.INFO, logger="recognizer.engine.precision"):
        chosen = resolve_precision("auto", CPU, ConformerCTC.bf16_on_cpu)
    assert chosen.name == expected and not chosen.scaled
    assert chosen.autocast_dtype == (torch.bfloat16 if expected == "bf16-mixed" else None)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and said in messages[0]  # the choice is said once


def test_auto_keeps_fp32_for_a_model_not_faster_in_bf16(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(prec, "cpu_capabilities", lambda: {"avx512_bf16": True, "amx_bf16": True})
    with caplog.at_level(logging.INFO, logger="recognizer.engine.precision"):
        assert resolve_precision("auto", CPU, CRNN.bf16_on_cpu).name == "32"  # its LSTMs stay fp32 anyway
        assert resolve_precision("auto", CPU).name == "32"  # callers that name no model keep fp32
    assert caplog.messages == ["precision=auto on CPU: fp32 (bf16 autocast is not measured faster for this model)"] * 2


def test_explicit_precisions_ignore_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prec, "cpu_capabilities", lambda: {"avx512_bf16": True})
    assert resolve_precision("32", CPU).autocast_dtype is None
    monkeypatch.setattr(prec, "cpu_capabilities", lambda: {})
    assert resolve_precision("bf16-mixed", CPU).autocast_dtype == torch.bfloat16


def test_auto_on_cuda_stays_fp16_with_a_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prec, "cpu_capabilities", lambda: pytest.fail("the CPU is not asked about on CUDA"))
    assert prec.auto_precision(torch.device("cuda"), bf16_faster=True) == "16-mixed"


def test_this_machines_capabilities_come_from_torch() -> None:
    caps = prec.cpu_capabilities()
    assert "architecture" in caps  # torch.cpu.get_capabilities() answers for every architecture
    assert prec.native_bf16() in (None, *prec.NATIVE_BF16)
