"""Export a checkpoint's model to TorchScript and ONNX, with the preprocessing it expects beside it.

:func:`export` (the command: ``recognizer-export``, :mod:`recognizer.cli.export`) writes ``model.ts``
(TorchScript, ``torch.jit.load``), ``model.onnx`` (opset 17; dynamic batch and width axes) and
``preprocessing.json`` (input layout, image preprocessing, alphabet, blank id, outputs). Both models
map ``inputs (B, 1, H, W)`` float32 (line images, or log-mel features of height ``n_mels`` for speech
models) and ``input_lengths (B,)`` int64 to ``logits (B, T, C)`` and ``output_lengths (B,)``; decode
with blank id 0. Feature extraction is not part of the export.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from recognizer.checkpoint import build_model, load_checkpoint
from recognizer.ctc import BLANK
from recognizer.data.audio.features import feature_settings
from recognizer.inference import is_audio, preprocessing

FORMATS = ("torchscript", "onnx")
OPSET = 17


class Exportable(nn.Module):
    """The model in eval mode with a fixed ``(inputs, input_lengths) -> (logits, output_lengths)`` signature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, inputs: Tensor, input_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 1, H, W)`` float32 and ``(B,)`` int64 → ``(B, T, C)`` logits and ``(B,)`` int64 lengths."""
        logits, lengths = self.model(inputs, input_lengths)
        return logits, lengths.long()


def example_inputs(height: int, widths: Sequence[int]) -> tuple[Tensor, Tensor]:
    """A deterministic padded batch: ``(B, 1, height, max(widths))`` in [0, 1] and ``(B,)`` widths."""
    gen = torch.Generator().manual_seed(0)
    inputs = torch.rand(len(widths), 1, height, max(widths), generator=gen)
    lengths = torch.tensor(list(widths), dtype=torch.long)
    mask = torch.arange(max(widths)) < lengths.unsqueeze(1)  # (B, W)
    return inputs * mask[:, None, None, :], lengths  # padding is 0, as in training


def export_torchscript(module: Exportable, example: tuple[Tensor, Tensor], path: Path) -> Path:
    """Trace ``module`` (shapes stay symbolic: width and batch may change) and save it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning on shape-dependent branches; checked by tests
        traced = torch.jit.trace(module, example, check_trace=False)
    traced.save(str(path))
    return path


def export_onnx(module: Exportable, example: tuple[Tensor, Tensor], path: Path) -> Path:
    """Export to ONNX with dynamic batch, width and frame axes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=["inputs", "input_lengths"],
            output_names=["logits", "output_lengths"],
            dynamic_axes={
                "inputs": {0: "batch", 3: "width"},
                "input_lengths": {0: "batch"},
                "logits": {0: "batch", 1: "frames"},
                "output_lengths": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    return path


def preprocessing_spec(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a caller must do to an input before the exported model sees it (saved as JSON)."""
    if is_audio(ckpt["config"]):
        data = ckpt["config"]["data"]
        return {
            "input": "inputs: float32 (batch, 1, n_mels, frames) log-mel features, zero-padded on the right; "
            "input_lengths: int64 (batch,) real frames",
            "height": int(data["n_mels"]),
            "features": feature_settings(data),  # top_db: null in checkpoints before it
            "steps": [
                f"read mono audio and resample to {data['sample_rate']} Hz",
                "log-mel features exactly as recognizer.data.audio.features.LogMel(sample_rate, n_mels, win_ms, "
                "hop_ms, n_fft, log_floor, normalize, top_db) with the values under 'features'",
                "pad batches with 0 on the right",
            ],
            **_common_spec(ckpt),
        }
    height, invert = preprocessing(ckpt["config"])
    return {
        "input": "inputs: float32 (batch, 1, height, width), zero-padded on the right; "
        "input_lengths: int64 (batch,) real widths",
        "height": height,
        "invert": invert,
        "steps": [
            "read as 8-bit grayscale (PIL convert('L')) and divide by 255 → [0, 1]",
            "if invert: x = 1 - x (ink bright, background 0)",
            f"resize to height {height} keeping the aspect ratio (bilinear, width = round(w * {height} / h))",
            "clip to [0, 1]; pad batches with 0 on the right",
        ],
        **_common_spec(ckpt),
    }


def _common_spec(ckpt: dict[str, Any]) -> dict[str, Any]:
    return {
        "outputs": "logits: float32 (batch, frames, classes); output_lengths: int64 (batch,) valid frames",
        "blank_id": BLANK,
        "alphabet": list(ckpt["alphabet"]),
        "decoding": "greedy: argmax per frame over the first output_lengths frames, merge repeats, drop id 0, "
        "id i > 0 is alphabet[i - 1]",
        "model": ckpt["config"]["model"],
    }


def export(checkpoint: str | Path, out: str | Path, formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """Export ``checkpoint`` into folder ``out``; returns the written files by name."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown export format(s) {bad}: choose from {list(FORMATS)}")
    ckpt = load_checkpoint(checkpoint)
    model, _ = build_model(ckpt)
    module = Exportable(model)
    spec = preprocessing_spec(ckpt)
    example = example_inputs(spec["height"], [64, 48])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"preprocessing": out / "preprocessing.json"}
    written["preprocessing"].write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with torch.no_grad():
        if "torchscript" in formats:
            written["torchscript"] = export_torchscript(module, example, out / "model.ts")
        if "onnx" in formats:
            written["onnx"] = export_onnx(module, example, out / "model.onnx")
    return written
