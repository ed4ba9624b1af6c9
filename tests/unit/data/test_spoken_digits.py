"""The embedded spoken digits: eSpeak NG synthesis, determinism, held-out voices, and a speech run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recognizer.checkpoint import load_checkpoint
from recognizer.data.audio.spoken_digits import TEST_VARIANTS, TRAIN_VARIANTS, WORDS, ESpeak, ensure_spoken_digits
from recognizer.evaluate import evaluate_checkpoint
from recognizer.train import train
from tests.conftest import compose_config

SIZES = {"train": 24, "val": 8, "test": 8}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("speech") / "spoken_digits"
    ensure_spoken_digits(root, SIZES, max_digits=3, sample_rate=16000, seed=0)
    return root


def rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def test_espeak_speaks_at_22050_hz() -> None:
    audio = ESpeak().synth("four seven two", "en-us+m1", 150, 50, 0)
    assert audio.dtype == np.int16 and 0.5 < len(audio) / 22050 < 3.0 and np.abs(audio).max() > 1000


def test_corpus_is_written_in_the_manifest_layout(corpus: Path) -> None:
    (base,) = corpus.iterdir()
    assert base.name == "sr16000_d3_s0_train24_val8_test8"
    train_rows = rows(base / "train.jsonl")
    assert len(train_rows) == 24
    for r in train_rows:
        assert set(r["text"].split()) <= set(WORDS) and 1 <= len(r["text"].split()) <= 3
        info = sf.info(str(base / r["audio_filepath"]))
        assert info.samplerate == 16000 and info.frames / 16000 == pytest.approx(r["duration"], abs=1e-3)
    test_voices = {r["voice"].split("+")[1] for r in rows(base / "test.jsonl")}
    assert test_voices <= set(TEST_VARIANTS) and not test_voices & set(TRAIN_VARIANTS)


def test_generation_is_deterministic(corpus: Path, tmp_path: Path) -> None:
    again = ensure_spoken_digits(tmp_path, {"train": 0, "val": 8, "test": 0}, max_digits=3, seed=0)["val"]
    (base,) = corpus.iterdir()
    first = rows(base / "val.jsonl")
    assert [r["text"] for r in rows(again)] == [r["text"] for r in first]
    for r in first[:3]:
        a, _ = sf.read(str(base / r["audio_filepath"]))
        b, _ = sf.read(str(again.parent / r["audio_filepath"]))
        assert np.array_equal(a, b)


def speech_overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "experiment=asr_digits_conformer",
        f"data.root={root}",
        *(f"data.num_{s}={n}" for s, n in SIZES.items()),
        "data.max_digits=3",
        "data.batch_size=8",
        "model.d_model=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.ffn_dim=64",
        "model.subsampling_channels=8",
        "trainer.max_epochs=2",
        "trainer.device=cpu",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
        "scheduler.warmup_steps=2",
        f"paths.output_dir={out}",
        *extra,
    ]


@pytest.mark.slow
def test_speech_recipe_trains_and_evaluates_end_to_end(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    metrics = train(compose_config("train", speech_overrides(corpus, out)))
    assert {"val/cer", "val/wer", "test/cer", "test/wer"} <= set(metrics)
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["step"] == 6 and ckpt["config"]["model"]["_target_"] == "recognizer.models.ConformerCTC"
    assert ckpt["config"]["data"]["n_mels"] == 80 and ckpt["config"]["data"]["hop_ms"] == 10.0
    assert set(ckpt["alphabet"]) <= set("".join(WORDS) + " ")
    audit = json.loads((out / "audit.json").read_text())
    assert audit[0]["kept"] == 24 and audit[0]["stats"]["frames_per_label_min"] >= 2.0
    cfg = compose_config(
        "eval",
        [
            f"checkpoint={out}/checkpoints/best.ckpt",
            "data=spoken_digits",
            f"data.root={corpus}",
            *(f"data.num_{s}={n}" for s, n in SIZES.items()),
            "data.max_digits=3",
            "data.n_mels=64",  # replaced by the checkpoint's 80
            f"paths.output_dir={tmp_path / 'eval'}",
            "device=cpu",
        ],
    )
    assert evaluate_checkpoint(cfg)["test/cer"] == pytest.approx(metrics["test/cer"])


def test_crnn_trains_on_spectrograms(corpus: Path, tmp_path: Path) -> None:
    overrides = speech_overrides(corpus, tmp_path / "run", "model=crnn", "trainer.max_epochs=1")
    overrides = [o for o in overrides if not o.startswith("model.")] + ["model.channels=[8,8,8]", "model.rnn_hidden=16"]
    metrics = train(compose_config("train", overrides))
    assert "val/cer" in metrics


def test_the_cache_knows_whether_a_setting_is_generated(tmp_path: Path) -> None:
    from recognizer.data.audio.modules import SpokenDigitsData
    from recognizer.data.audio.spoken_digits import spoken_digits_manifests

    data = SpokenDigitsData(str(tmp_path), num_train=4, num_val=2, num_test=0)
    assert not data.is_generated()
    smaller = spoken_digits_manifests(tmp_path, {"train": 2, "val": 2, "test": 0})
    for split in ("train", "val"):  # another setting's cache does not count
        smaller[split].parent.mkdir(parents=True, exist_ok=True)
        smaller[split].touch()
    assert not data.is_generated()
    for split in ("train", "val"):  # test has 0 utterances: not needed
        path = spoken_digits_manifests(tmp_path, data.sizes)[split]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    assert data.is_generated()
