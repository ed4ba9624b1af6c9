"""recognizer-export: TorchScript and ONNX outputs equal eager outputs on several input sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recognizer.checkpoint import build_model, load_checkpoint
from recognizer.cli.export import main
from recognizer.export import example_inputs, export
from tests.helpers.tiny_checkpoint import tiny_checkpoint, untrained_audio_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
SIZES = [[64, 48], [20], [100, 30, 57, 8], [7]]  # batch and width vary; 7 is below the pooling minimum
ATOL = 1e-4


@pytest.fixture(scope="module")
def exported(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    ckpt = tiny_checkpoint(tmp_path_factory, data_root)
    out = tmp_path_factory.mktemp("exported")
    written = export(ckpt, out)
    assert set(written) == {"preprocessing", "torchscript", "onnx"}
    return ckpt, out


def eager(ckpt: Path, widths: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    model, _ = build_model(load_checkpoint(ckpt))
    x, lengths = example_inputs(16, widths)
    with torch.no_grad():
        logits, out_lengths = model.eval()(x, lengths)
    return x, lengths, logits, out_lengths


def valid(logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return logits[torch.arange(logits.size(1)) < lengths[:, None]]  # padded frames are not compared


@pytest.mark.parametrize("widths", SIZES)
def test_torchscript_matches_eager(exported: tuple[Path, Path], widths: list[int]) -> None:
    ckpt, out = exported
    x, lengths, logits, out_lengths = eager(ckpt, widths)
    scripted = torch.jit.load(str(out / "model.ts"))
    with torch.no_grad():
        ts_logits, ts_lengths = scripted(x, lengths)
    assert torch.equal(ts_lengths, out_lengths) and ts_logits.shape == logits.shape
    assert (valid(ts_logits, out_lengths) - valid(logits, out_lengths)).abs().max() < ATOL


@pytest.mark.parametrize("widths", SIZES)
def test_onnx_matches_eager(exported: tuple[Path, Path], widths: list[int]) -> None:
    ort = pytest.importorskip("onnxruntime", reason="pip install -e '.[export]' for the ONNX runtime")
    ckpt, out = exported
    x, lengths, logits, out_lengths = eager(ckpt, widths)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits, onnx_lengths = session.run(None, {"inputs": x.numpy(), "input_lengths": lengths.numpy()})
    assert onnx_lengths.tolist() == out_lengths.tolist() and onnx_logits.shape == tuple(logits.shape)
    assert (valid(torch.from_numpy(onnx_logits), out_lengths) - valid(logits, out_lengths)).abs().max() < ATOL


def test_preprocessing_is_saved_beside(exported: tuple[Path, Path]) -> None:
    _, out = exported
    spec = json.loads((out / "preprocessing.json").read_text())
    assert (spec["height"], spec["invert"], spec["blank_id"]) == (16, True, 0)
    assert spec["alphabet"] == list("0123456789")
    assert spec["model"]["_target_"] == "recognizer.models.CRNN"


def test_unknown_format(exported: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, _ = exported
    with pytest.raises(
        SystemExit, match=r"unknown export format\(s\) \['tflite'\]: choose from \['torchscript', 'onnx'\]"
    ):
        main([str(ckpt), "--out", str(tmp_path), "--formats", "tflite"])


def test_audio_model_export_documents_its_features(tmp_path: Path) -> None:
    ckpt = untrained_audio_checkpoint(tmp_path / "asr.ckpt")
    export(ckpt, tmp_path / "out", ["torchscript"])
    spec = json.loads((tmp_path / "out" / "preprocessing.json").read_text())
    assert spec["height"] == 32 and spec["features"]["n_mels"] == 32 and spec["features"]["sample_rate"] == 16000
    assert spec["features"]["top_db"] is None  # every LogMel argument is named, the dynamic range too
    model, _ = build_model(load_checkpoint(ckpt))
    x, lengths = example_inputs(32, [90, 41])
    with torch.no_grad():
        logits, out_lengths = model.eval()(x, lengths)
        ts_logits, ts_lengths = torch.jit.load(str(tmp_path / "out" / "model.ts"))(x, lengths)
    assert torch.equal(ts_lengths, out_lengths)
    assert (valid(ts_logits, out_lengths) - valid(logits, out_lengths)).abs().max() < ATOL
