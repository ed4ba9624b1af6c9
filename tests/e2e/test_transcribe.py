"""recognizer-transcribe: input expansion, batching, output formats, decoders, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recognizer.checkpoint import build_model, load_checkpoint
from recognizer.cli.transcribe import main
from recognizer.ctc import greedy_decode
from recognizer.transcribe import collect_inputs
from tests.helpers.tiny_checkpoint import sample_line, tiny_checkpoint, untrained_audio_checkpoint, write_audio


@pytest.fixture(scope="module")
def ckpt(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory, data_root)


@pytest.fixture(scope="module")
def images(ckpt: Path, data_root: Path) -> list[Path]:
    return [sample_line(data_root, "test", i)[0] for i in range(5)]


def eager_greedy(ckpt: Path, data_root: Path, index: int) -> str:
    """The model's greedy transcript of test line ``index``, through the test data set's own loading."""
    model, alphabet = build_model(load_checkpoint(ckpt))
    from recognizer.data.images.lines import LineDataset, read_records

    dataset = LineDataset(read_records(next(data_root.glob("digit_lines/*/test.tsv"))), height=16)
    x = dataset.load(index)
    with torch.no_grad():
        logits, lengths = model.eval()(x.unsqueeze(0), torch.tensor([x.size(-1)]))
    return alphabet.decode(greedy_decode(logits, lengths)[0])


def test_text_output_keeps_input_order(ckpt: Path, images: list[Path], data_root: Path, capsys) -> None:
    main([str(ckpt), *map(str, images[::-1]), "--batch-size", "2", "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(p) for p in images[::-1]]
    assert lines[-1].split("\t")[1] == eager_greedy(ckpt, data_root, 0)  # same preprocessing as training


def test_jsonl_with_timings_and_beam(ckpt: Path, images: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.jsonl"
    main([str(ckpt), str(images[0]), "--jsonl", str(out)])
    greedy = json.loads(out.read_text())
    assert set(greedy) == {"path", "text", "score", "confidence"} and greedy["score"] <= 0
    assert 0 < greedy["confidence"] <= 1
    main([str(ckpt), str(images[0]), "--jsonl", str(out), "--timings", "--decoding", "beam", "--beam-size", "8"])
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["text"] == greedy["text"] == "".join(t["token"] for t in row["tokens"])
    frames = [t["frame"] for t in row["tokens"]]
    assert frames == sorted(frames) and all(t["x"] >= 0 for t in row["tokens"])
    assert capsys.readouterr().out == ""  # nothing on stdout when writing a file


def test_folders_and_globs(images: list[Path], tmp_path: Path) -> None:
    folder = images[0].parent
    assert collect_inputs([str(folder)]) == sorted(p for p in folder.iterdir() if p.suffix == ".png")
    assert collect_inputs([str(folder / "*-00000[0-2].png"), str(images[0])]) == images[:3]  # duplicates dropped
    with pytest.raises(
        FileNotFoundError, match=r"nothing\*.png: no input matches \(expected a file, a folder or a glob"
    ):
        collect_inputs([str(tmp_path / "nothing*.png")])


def test_errors_are_one_line(ckpt: Path, images: list[Path]) -> None:
    with pytest.raises(SystemExit, match=r"--lm needs --decoding beam \(the greedy decoder has no lm\)"):
        main([str(ckpt), str(images[0]), "--lm", "x.arpa"])
    with pytest.raises(SystemExit, match=r"checkpoint .*missing.ckpt does not exist"):
        main([str(Path("missing.ckpt")), str(images[0])])
    with pytest.raises(SystemExit, match="2"):  # argparse: usage error
        main([str(ckpt), str(images[0]), "--timings"])


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
def test_what_is_not_a_training_checkpoint_is_named(ckpt: Path, images: list[Path], tmp_path: Path) -> None:
    scripted = torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2))
    scripted.save(str(tmp_path / "model.ts"))
    torch.save(load_checkpoint(ckpt)["model"], tmp_path / "weights.pt")  # a bare state_dict
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    (tmp_path / "cut.ckpt").write_bytes(ckpt.read_bytes()[:1000])  # an interrupted copy
    fix = r"give a \.ckpt written by recognizer-train \(checkpoints/best\.ckpt or last\.ckpt of a run\)"
    for name, what in [
        ("model.ts", ".*model.ts is a TorchScript export, not a training checkpoint"),
        ("weights.pt", ".*weights.pt is not a training checkpoint \\(no 'model', 'alphabet', 'config'\\)"),
        ("junk.ckpt", "cannot load checkpoint .*junk.ckpt \\(not a PyTorch file\\)"),
        ("cut.ckpt", "cannot load checkpoint .*cut.ckpt \\(truncated or corrupted: PytorchStreamReader failed"),
    ]:
        with pytest.raises(SystemExit, match=f"recognizer-transcribe: error: {what}.*: {fix}"):
            main([str(tmp_path / name), str(images[0])])
    with pytest.raises(SystemExit, match=r"checkpoint .*ckdir is a folder, not a file \(it holds a.ckpt, b.ckpt\)"):
        (tmp_path / "ckdir").mkdir()
        for n in ("b.ckpt", "a.ckpt"):
            (tmp_path / "ckdir" / n).touch()
        main([str(tmp_path / "ckdir"), str(images[0])])


def test_unreadable_image_and_missing_lexicon_are_named(ckpt: Path, images: list[Path], tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("hi")
    with pytest.raises(SystemExit, match=r"error: cannot read image .*fake.png: .*; re-encode it or leave it out"):
        main([str(ckpt), str(images[0]), str(fake)])
    with pytest.raises(SystemExit, match=r"error: decoding.lexicon=.*nope.lex does not exist"):
        main([str(ckpt), str(images[0]), "--decoding", "beam", "--lexicon", str(tmp_path / "nope.lex")])


@pytest.mark.slow
def test_console_script(ckpt: Path, images: list[Path]) -> None:
    script = Path(sys.executable).parent / "recognizer-transcribe"
    run = subprocess.run(
        [str(script), str(ckpt), str(images[1]), "--jsonl", "-"],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        check=True,
    )
    assert json.loads(run.stdout)["path"] == str(images[1])


def test_audio_checkpoint_uses_its_feature_front_end(tmp_path: Path, capsys) -> None:
    """An (untrained) audio CRNN: WAV files get the checkpoint's log-mel features; positions are seconds."""
    untrained_audio_checkpoint(tmp_path / "asr.ckpt")
    write_audio(tmp_path)
    main([str(tmp_path / "asr.ckpt"), str(tmp_path), "--jsonl", "-", "--timings", "--device", "cpu"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["a.wav", "b.flac"]
    for row, seconds in zip(rows, (1.0, 0.25)):
        assert all(set(tok) == {"token", "frame", "time", "confidence"} for tok in row["tokens"])
        assert all(0 <= tok["time"] < seconds and 0 < tok["confidence"] <= 1 for tok in row["tokens"])
    with pytest.raises(
        SystemExit, match=r"x.png: no input matches \(expected a file, a folder or a glob of .wav, .flac, .ogg"
    ):
        main([str(tmp_path / "asr.ckpt"), str(tmp_path / "x.png")])
