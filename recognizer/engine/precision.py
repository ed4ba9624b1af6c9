"""Numeric precision: fp32, fp16 autocast with a GradScaler (CUDA), or bf16 autocast."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "32", "16-mixed", "bf16-mixed")


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


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """Build the :class:`Precision` for ``trainer.precision`` on ``device``.

    ``auto`` is fp16 autocast + GradScaler on CUDA and fp32 on CPU.
    """
    precision = str(precision)
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        precision = "16-mixed" if device.type == "cuda" else "32"
    if precision == "16-mixed" and device.type != "cuda":
        raise ValueError(
            "trainer.precision=16-mixed needs CUDA (fp16 autocast with a GradScaler); "
            "on CPU use trainer.precision=32 or bf16-mixed"
        )
    dtype = {"32": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    return Precision(precision, device, dtype, scaler)
