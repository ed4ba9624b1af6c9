"""Alignment picture: forced alignment on hand-made log-probs, the PNG from the command line."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from recognizer.cli.align import main
from recognizer.plots import forced_alignment
from recognizer.train import train
from tests.conftest import compose_config, tiny_overrides
from tests.helpers.tiny_checkpoint import sample_line, tiny_checkpoint, untrained_audio_checkpoint, write_audio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[2]


def test_forced_alignment_follows_the_emissions() -> None:
    # frames favour: 1, 1, blank, 2, blank  → the path of target [1, 2]
    probs = torch.full((5, 3), 0.05)
    for t, i in enumerate([1, 1, 0, 2, 0]):
        probs[t, i] = 0.9
    assert forced_alignment(probs.log(), [1, 2]) == [1, 1, 0, 2, 0]
    assert forced_alignment(probs.log(), []) == [0] * 5


def test_forced_alignment_reports_infeasible_references() -> None:
    log_probs = torch.zeros(3, 3).log_softmax(-1)
    assert forced_alignment(log_probs, [1, 1]) == [1, 0, 1]  # exactly L + repeats = 3 frames
    assert forced_alignment(log_probs, [1, 1, 2]) is None  # needs 4


def test_alignment_png_from_the_command_line(data_root: Path, tmp_path_factory: pytest.TempPathFactory, capsys) -> None:
    ckpt = tiny_checkpoint(tmp_path_factory, data_root)
    image, text = sample_line(data_root, "val", 0)
    out = tmp_path_factory.mktemp("align")
    main([str(ckpt), str(image), text, "--out", str(out / "a.png")])
    main([str(ckpt), str(image), "1" * 40, "--out", str(out / "too_long.png")])  # drawn, with the reason
    main([str(ckpt), str(image), "--out", str(out / "no_ref.png")])
    assert capsys.readouterr().out.split() == [str(out / n) for n in ("a.png", "too_long.png", "no_ref.png")]
    for name in ("a.png", "too_long.png", "no_ref.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(SystemExit, match=r"symbol 'x' \(U\+0078\) in 'x1' is not in the alphabet"):
        main([str(ckpt), str(image), "x1", "--out", str(out / "bad.png")])


def test_alignment_of_an_utterance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = untrained_audio_checkpoint(tmp_path / "asr.ckpt")
    wav, _ = write_audio(tmp_path)
    main([str(ckpt), str(wav), "ab", "--out", str(tmp_path / "u.png")])
    assert (tmp_path / "u.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(SystemExit) as exit_info:
        main([str(ckpt), str(tmp_path / "missing.wav"), "ab"])
    assert exit_info.value.code == 3  # a data error (recognizer.errors)
    assert re.search(r"recognizer-align: error: input .*missing.wav does not exist", capsys.readouterr().err)


def test_training_writes_alignment_pictures_after_each_validation(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(compose_config("train", tiny_overrides(data_root, out, "trainer.alignment_samples=2")))
    epochs = sorted(p.name for p in (out / "alignments").iterdir())
    assert epochs == ["epoch_001", "epoch_002"]
    for epoch in epochs:
        pictures = sorted((out / "alignments" / epoch).glob("*.png"))
        assert len(pictures) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)
    assert [p.name for p in pictures] == ["val_val-000000.png", "val_val-000001.png"]  # ids val/val-00000N.png


def test_no_alignment_pictures_by_default(tiny_cfg) -> None:
    train(tiny_cfg)
    assert not (Path(tiny_cfg.paths.output_dir) / "alignments").exists()


def imported_modules(path: Path) -> set[str]:
    """Every ``recognizer...`` module a source file imports (at any depth, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("recognizer")}


def test_library_modules_import_no_entry_point() -> None:
    """The console scripts' modules sit on top: library code (the loop drawing alignments too) never imports one."""
    scripts = re.findall(r'^recognizer-[\w-]+ = "([\w.]+):main"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert {"recognizer.cli.train", "recognizer.cli.align"} <= set(scripts)
    for path in sorted((ROOT / "recognizer").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if module not in scripts:
            assert not imported_modules(path) & set(scripts), f"{module} imports an entry point"
