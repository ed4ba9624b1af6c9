"""LibriSpeech layout on a tiny fixture tree; bad transcripts and too-short utterances; the GPU recipe smoke-tested."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recognizer.data.audio.librispeech import normalize_text, read_librispeech
from recognizer.data.images.lines import DataError
from recognizer.stability.audit import AuditError
from recognizer.train import train
from tests.conftest import compose_config

TEXTS = ["HELLO WORLD", "IT'S A TEST", "GOOD  MORNING", "ONE MORE LINE", "SPEECH IS FUN", "THE END"]


def write_librispeech(root: Path, subset: str, texts: list[str], seconds: float = 1.5) -> Path:
    """``root/subset/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` + ``SPEAKER-CHAPTER.trans.txt``."""
    rng = np.random.default_rng(len(texts))
    for k, (speaker, chapter) in enumerate([("19", "198"), ("26", "495")]):
        folder = root / subset / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i, text in enumerate(texts[k::2]):
            utt = f"{speaker}-{chapter}-{i:04d}"
            sf.write(folder / f"{utt}.flac", rng.normal(0, 0.1, round(seconds * 16000)).astype(np.float32), 16000)
            lines.append(f"{utt} {text}")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_reads_the_layout_with_normalised_text(tmp_path: Path) -> None:
    root = write_librispeech(tmp_path / "LibriSpeech", "dev-clean", TEXTS)
    records = read_librispeech(root, ["dev-clean"])
    assert [r.id for r in records][:2] == ["19-198-0000", "19-198-0001"]
    assert {r.text for r in records} == {normalize_text(t) for t in TEXTS}
    assert "good morning" in {r.text for r in records} and records[0].duration == 1.5


def test_missing_subset_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(
        DataError,
        match=r"LibriSpeech subset 'test-other' not found at .*: download it from https://www\.openslr\.org/12",
    ):
        read_librispeech(tmp_path, ["test-other"])


def test_transcript_without_audio_is_named(tmp_path: Path) -> None:
    root = write_librispeech(tmp_path / "LibriSpeech", "dev-clean", TEXTS)
    (root / "dev-clean" / "26" / "495" / "26-495-0001.flac").unlink()
    with pytest.raises(DataError, match=r"26-495\.trans\.txt:2: utterance 26-495-0001 has no audio file"):
        read_librispeech(root, ["dev-clean"])


def overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "experiment=librispeech_conformer_ctc",
        f"data.root={root}",
        "data.train=[train-clean-100]",
        "data.val=[dev-clean]",
        "data.test=[]",
        "data.num_workers=0",
        "data.batch_size=4",
        "model.d_model=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.ffn_dim=64",
        "model.subsampling_channels=8",
        "trainer.max_epochs=1",
        "trainer.device=cpu",
        "trainer.precision=32",
        "trainer.progress_bar=false",
        "scheduler.warmup_steps=1",
        f"paths.output_dir={out}",
        *extra,
    ]


def test_librispeech_recipe_smoke_run(tmp_path: Path) -> None:
    root = tmp_path / "LibriSpeech"
    write_librispeech(root, "train-clean-100", TEXTS)
    write_librispeech(root, "dev-clean", TEXTS[:2])
    metrics = train(compose_config("train", overrides(root, tmp_path / "run")))
    assert "val/cer" in metrics and "test/cer" not in metrics
    assert json.loads((tmp_path / "run" / "audit.json").read_text())[0]["kept"] == 6


def test_empty_transcript_and_too_short_utterance_are_named(tmp_path: Path) -> None:
    root = tmp_path / "LibriSpeech"
    write_librispeech(root, "train-clean-100", TEXTS)
    write_librispeech(root, "dev-clean", TEXTS[:2])
    short = root / "train-clean-100" / "19" / "198"
    sf.write(short / "19-198-0000.flac", np.random.default_rng(0).normal(0, 0.1, 4000).astype(np.float32), 16000)
    (short / "19-198.trans.txt").write_text("19-198-0000 A LONG SENTENCE FOR A QUARTER SECOND\n19-198-0001\n")
    with pytest.raises(AuditError) as err:
        train(compose_config("train", overrides(root, tmp_path / "run", "stability.audit_policy=error")))
    message = str(err.value)
    # 0.25 s → 26 frames → 7 after 4× subsampling; 36 letters need at least 36
    assert "infeasible: 1 — e.g. 19-198-0000: width 26 → 7 frames < 36 needed" in message
    assert "empty: 1 — e.g. 19-198-0001: empty transcript" in message
