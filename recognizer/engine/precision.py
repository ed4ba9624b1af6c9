"""Numeric precision: fp32, fp16 autocast with a GradScaler (CUDA), or bf16 autocast."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "32", "16-mixed", "bf16-mixed")
#: CPU features that compute bf16 natively (x86: AVX512-BF16 dot products, AMX tiles). Where they are
#: missing, oneDNN emulates bf16 with conversions and bf16 autocast is slower than fp32.
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


def cpu_capabilities() -> Mapping[str, Any]:
    """The CPU features PyTorch detects (``torch.cpu.get_capabilities()``; a seam for tests)."""
    return torch.cpu.get_capabilities()


def native_bf16() -> str | None:
    """The first CPU feature of :data:`NATIVE_BF16` this CPU has, or None."""
    caps = cpu_capabilities()
    return next((f for f in NATIVE_BF16 if caps.get(f)), None)


def auto_precision(device: torch.device, bf16_faster: bool = False) -> str:
    """What ``precision=auto`` means on ``device`` for a model, said once per call.

    CUDA: fp16 autocast with a GradScaler. CPU: bf16 autocast where the CPU computes bf16 natively
    and the model trains faster in it (``bf16_faster``: the model's ``bf16_on_cpu``, from the
    measurement in docs/scale.md, "Model throughput": the Conformer 1.6x, the CRNN not at all), else
    fp32. Arm CPUs (BF16/SVE-BF16) get fp32: not measured.
    """
    if device.type == "cuda":
        return "16-mixed"
    if device.type != "cpu":
        return "32"
    if not bf16_faster:
        log.info("precision=auto on CPU: fp32 (bf16 autocast is not measured faster for this model)")
        return "32"
    feature = native_bf16()
    if feature is None:
        log.info("precision=auto on CPU: fp32 (no native bf16 on this CPU: none of %s)", ", ".join(NATIVE_BF16))
        return "32"
    log.info("precision=auto on CPU: bf16-mixed (native bf16: %s; set precision=32 for fp32)", feature)
    return "bf16-mixed"


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={device} but CUDA is not available: use trainer.device=cpu")
    return dev


@dataclass
class Precision:
    """How forward passes run. Losses are always fp32 (see :mod:`recognizer.ctc`)."""

    name: str
    device: torch.device
    autocast_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @property
    def scaled(self) -> bool:
        return self.scaler.is_enabled()


def resolve_precision(precision: str, device: torch.device, bf16_faster: bool = False) -> Precision:
    """Build the :class:`Precision` for ``trainer.precision`` on ``device``.

    ``auto`` is fp16 autocast + GradScaler on CUDA; on CPU bf16 autocast where bf16 is native and
    ``bf16_faster`` (the model's ``bf16_on_cpu``), else fp32 (:func:`auto_precision`).
    """
    precision = str(precision)
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        precision = auto_precision(device, bf16_faster)
    if precision == "16-mixed" and device.type != "cuda":
        raise ValueError(
            "trainer.precision=16-mixed needs CUDA (fp16 autocast with a GradScaler); "
            "on CPU use trainer.precision=32 or bf16-mixed"
        )
    dtype = {"32": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    return Precision(precision, device, dtype, scaler)
