"""Audio input: manifests, features, exact frame counts, and every bad input named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from recognizer.alphabet import Alphabet
from recognizer.data.audio.features import LogMel, SpecAugment
from recognizer.data.audio.modules import AudioManifestData
from recognizer.data.audio.reading import read_audio, resampled_length
from recognizer.data.audio.speech import AudioDataset, filter_duration, read_audio_manifest
from recognizer.data.batching import Collate
from recognizer.data.images.lines import DataError


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def write_manifest(
    folder: Path, items: dict[str, tuple[np.ndarray, int, str]], fmt: str = "flac", subtype: str | None = None
) -> Path:
    """Audio files under ``folder/audio`` and a JSONL manifest with paths relative to it."""
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (samples, rate, text) in items.items():
        rel = f"audio/{name}.{fmt}"
        sf.write(folder / rel, samples, rate, subtype=subtype)
        rows.append(json.dumps({"audio_filepath": rel, "duration": len(samples) / rate, "text": text}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def dataset(manifest: Path, resample: bool = True, **kwargs) -> AudioDataset:
    return AudioManifestData(str(manifest), None, resample=resample, **kwargs).dataset("train")


def test_manifest_paths_are_relative_to_the_manifest(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, {"a": (tone(0.5), 16000, "one two"), "b": (tone(0.3), 16000, "three")})
    records = read_audio_manifest(manifest)
    assert [r.id for r in records] == ["audio/a.flac", "audio/b.flac"]
    assert records[0].path == tmp_path / "audio" / "a.flac" and records[0].duration == 0.5


@pytest.mark.parametrize(
    ("rate", "seconds"), [(16000, 0.5), (22050, 0.73), (8000, 1.234), (44100, 0.01), (16000, 0.001)]
)
def test_widths_from_headers_equal_the_real_frames(tmp_path: Path, rate: int, seconds: float) -> None:
    manifest = write_manifest(tmp_path, {"x": (tone(seconds, rate), rate, "a")})
    ds = dataset(manifest, spec_augment=None)
    x = ds.load(0)
    assert x.dtype == torch.float32 and x.shape == (1, 80, ds.widths[0])
    assert ds.widths[0] == 1 + resampled_length(round(seconds * rate), rate, 16000) // 160


def test_features_are_normalised_per_mel_bin_in_fp32_under_autocast() -> None:
    wave = torch.from_numpy(tone(1.0)) * 1000  # loud: would overflow fp16 in the power spectrum
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = LogMel()(wave)
    assert x.dtype == torch.float32 and x.shape == (80, 101) and torch.isfinite(x).all()
    torch.testing.assert_close(x.mean(dim=1), torch.zeros(80), atol=1e-4, rtol=0)


def padded_word(gain: float) -> torch.Tensor:
    """A 0.3 s tone between 0.2 s of digital silence (how FSDD's trimmed clips are padded)."""
    silence = np.zeros(3200, np.float32)
    return torch.from_numpy(np.concatenate([silence, gain * tone(0.3), silence]))


def test_top_db_makes_features_independent_of_the_recording_gain() -> None:
    loud, quiet = padded_word(1.0), padded_word(0.05)  # 26 dB apart, as FSDD's loudest and quietest speakers
    plain = LogMel()
    assert (plain(loud) - plain(quiet)).abs().max() > 0.5  # the step to the padding's floor differs
    limited = LogMel(top_db=60.0)
    torch.testing.assert_close(limited(loud), limited(quiet), atol=1e-3, rtol=0)
    raw = LogMel(top_db=60.0, normalize="none")(quiet)
    assert raw.max() - raw.min() == pytest.approx(60 * np.log(10) / 10, rel=1e-5)  # 60 dB in natural-log units


def test_top_db_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"data.top_db must be > 0 dB or null, got 0"):
        LogMel(top_db=0)


def test_checkpoints_older_than_top_db_keep_their_front_end() -> None:
    from recognizer.checkpoint import preprocessing_settings

    old = {"sample_rate": 16000, "n_mels": 40, "win_ms": 25.0, "hop_ms": 10.0, "n_fft": None}
    old |= {"log_floor": 1e-6, "normalize": "per_feature"}
    assert LogMel.from_config(old).top_range is None and LogMel.from_config(old).mel.n_mels == 40

    def settings(data: dict) -> dict:
        return preprocessing_settings({"config": {"data": data}})

    assert settings(old) == {**old, "top_db": None}  # eval must not apply data.top_db
    assert settings({**old, "top_db": 60.0})["top_db"] == 60.0
    assert "top_db" not in settings({"height": 32, "invert": True})  # images have no front end


def test_spec_augment_masks_train_batches_within_each_length(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, {"x": (tone(1.0), 16000, "a"), "y": (tone(0.4), 16000, "b")})
    data = AudioManifestData(str(manifest), str(manifest), spec_augment=SpecAugment(2, 20, 2, 20, 0.2))
    assert torch.equal(data.dataset("train")[0]["input"], data.dataset("train").load(0))  # loaders never mask
    batch = Collate(Alphabet(["a", "b"]))([data.dataset("train")[i] for i in (0, 1)])
    torch.manual_seed(0)
    masked = data.train_augment(batch)
    assert torch.equal(batch.inputs, Collate(Alphabet(["a", "b"]))([data.dataset("train")[i] for i in (0, 1)]).inputs)
    short = int(batch.input_lengths[1])
    assert short < batch.inputs.shape[-1]
    assert torch.equal(masked.inputs[1, ..., short:], batch.inputs[1, ..., short:])  # padding untouched
    for i in (0, 1):
        n = int(batch.input_lengths[i])
        assert (masked.inputs[i, ..., :n] == 0).sum() > (batch.inputs[i, ..., :n] == 0).sum()
    assert masked.ids == batch.ids and torch.equal(masked.targets, batch.targets)
    assert AudioManifestData(str(manifest), None, spec_augment=None).train_augment is None


def test_duration_filters_keep_the_range(tmp_path: Path) -> None:
    items = {f"u{i}": (tone(s), 16000, "a") for i, s in enumerate([0.2, 1.0, 3.0])}
    manifest = write_manifest(tmp_path, items)
    kept = filter_duration(read_audio_manifest(manifest), 0.5, 2.0, "train data")
    assert [r.id for r in kept] == ["audio/u1.flac"]
    with pytest.raises(DataError, match=r"train data: no utterance is within data.min_duration=5.0"):
        filter_duration(read_audio_manifest(manifest), 5.0, None, "train data")


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    stereo = np.stack([tone(0.2), tone(0.2, freq=300)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 16000)
    assert read_audio(tmp_path / "s.wav", 16000).shape == (3200,)


# --- bad input: each is named with the file and the fix --------------------------------------


def test_missing_audio_file(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, {"a": (tone(0.2), 16000, "a")})
    (tmp_path / "audio" / "a.flac").unlink()
    with pytest.raises(DataError, match=r"audio file .*a\.flac does not exist: fix the path or remove it"):
        _ = dataset(manifest).widths


def test_corrupt_audio_file(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, {"a": (tone(0.2), 16000, "a")})
    (tmp_path / "audio" / "a.flac").write_bytes(b"fLaC" + b"\x00" * 50)
    with pytest.raises(DataError, match=r"cannot read audio .*a\.flac: .*convert the file"):
        _ = dataset(manifest).widths


def test_unsupported_format(tmp_path: Path) -> None:
    (tmp_path / "a.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A " + bytes(100))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "a.m4a", "duration": 1.0, "text": "a"}) + "\n")
    with pytest.raises(DataError, match=r"cannot read audio .*a\.m4a: .*Supported formats are those of libsndfile"):
        _ = dataset(manifest).widths


def test_nan_samples_are_a_non_finite_error(tmp_path: Path) -> None:
    samples = tone(0.2)
    samples[100:110] = np.nan
    manifest = write_manifest(tmp_path, {"a": (samples, 16000, "a")}, fmt="wav", subtype="FLOAT")  # keeps NaN
    with pytest.raises(DataError, match=r"audio .*a\.wav has 10 non-finite sample\(s\) \(NaN/Inf\)"):
        dataset(manifest).load(0)


def test_rate_mismatch_without_resampling(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, {"a": (tone(0.2, 8000), 8000, "a")})
    with pytest.raises(
        DataError,
        match=r"audio .*a\.flac \(utterance audio/a\.flac\) is sampled at 8000 Hz but the model expects 16000 Hz: "
        r"set data\.resample=true",
    ):
        _ = dataset(manifest, resample=False).widths


def test_silent_and_empty_audio(tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path,
        {"silent": (np.zeros(1600, np.float32), 16000, "a"), "empty": (np.zeros(0, np.float32), 16000, "a")},
        fmt="wav",  # libsndfile cannot read back an empty FLAC; an empty WAV is a valid file
    )
    ds = dataset(manifest)
    with pytest.raises(DataError, match=r"silent\.wav is silent \(all 1600 samples are 0\)"):
        ds.load(0)
    with pytest.raises(DataError, match=r"empty\.wav \(utterance audio/empty\.wav\) is empty \(0 samples\)"):
        _ = ds.widths


def test_clipping_is_counted_in_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    samples = tone(0.2)
    samples[:50] = 1.0
    manifest = write_manifest(tmp_path, {"a": (samples, 16000, "a")}, fmt="wav")
    dataset(manifest).load(0)
    assert "50 of 3200 samples are clipped" in caplog.text


def test_bad_manifest_line_is_named(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio_filepath": "a.flac", "text": "a"}\n')
    with pytest.raises(DataError, match=r"m\.jsonl:1: expected a JSON object with 'audio_filepath', 'duration'"):
        read_audio_manifest(manifest)


def test_height_must_equal_n_mels() -> None:
    with pytest.raises(ValueError, match=r"data.height=64 must equal data.n_mels=80"):
        AudioManifestData(None, None, height=64)


def test_user_manifest_trains_and_the_audit_drops_nan_and_silent_files(tmp_path: Path) -> None:
    from recognizer.train import train
    from tests.conftest import compose_config, tiny_speech_overrides

    bad = tone(1.0, seed=3)
    bad[10] = np.inf
    items = {f"u{i}": (tone(1.0, seed=i), 16000, text) for i, text in enumerate(["one two", "three", "four one"])}
    silent = np.zeros(16000, np.float32)
    bad_items = {"bad": (bad, 16000, "two"), "quiet": (silent, 16000, "one")}
    manifest = write_manifest(tmp_path, items | bad_items, fmt="wav", subtype="FLOAT")
    out = tmp_path / "run"
    overrides = tiny_speech_overrides("audio_manifest", manifest, manifest, out, "stability.audit_policy=drop")
    assert "val/cer" in train(compose_config("train", overrides))
    train_report = json.loads((out / "audit.json").read_text())[0]
    assert train_report["kept"] == 3 and train_report["dropped"] == 2
    violations = train_report["violations"]
    assert {k: v["count"] for k, v in violations.items()} == {"non_finite": 1, "silent": 1}
    assert "quiet.wav is silent (all 16000 samples are 0)" in violations["silent"]["examples"][0]
    assert "audio/bad.wav has 1 non-finite sample(s)" in violations["non_finite"]["examples"][0]


def test_speech_training_with_spec_augment_resumes_exactly(tmp_path: Path) -> None:
    """SpecAugment draws from the global RNG, which checkpoints save: a mid-epoch resume is exact."""
    from recognizer.train import train
    from tests.conftest import compose_config
    from tests.helpers.runs import step_losses

    texts = ["one two", "three", "four one", "two", "one", "three four"]
    items = {f"u{i}": (tone(0.6 + 0.1 * i, seed=i), 16000, t) for i, t in enumerate(texts)}
    manifest = write_manifest(tmp_path, items, fmt="wav")

    def overrides(out: Path, *extra: str) -> list[str]:
        model = ["model.d_model=16", "model.num_layers=1", "model.num_heads=2", "model.ffn_dim=32"]
        return [
            "data=audio_manifest",
            f"data.train={manifest}",
            f"data.val={manifest}",
            "data.batch_size=2",
            "model=conformer",
            *model,
            "model.subsampling_channels=4",
            "trainer.max_epochs=2",
            "trainer.device=cpu",
            "trainer.progress_bar=false",
            "trainer.log_every_n_steps=1",
            "scheduler.warmup_steps=1",
            f"paths.output_dir={out}",
            *extra,
        ]

    full, parts = tmp_path / "full", tmp_path / "parts"
    train(compose_config("train", overrides(full)))
    train(compose_config("train", overrides(parts, "trainer.max_steps=4")))  # stops inside epoch 2
    train(compose_config("train", overrides(parts, "trainer.resume=auto")))
    assert sorted(step_losses(full)) == list(range(1, 7))
    assert step_losses(parts) == step_losses(full)


def test_audio_longer_than_the_limit_is_refused_before_it_is_decoded_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few kB of FLAC can hold hours of one value: the length limit stops the read one sample past it."""
    from recognizer.data.audio import reading

    path = tmp_path / "long.flac"
    sf.write(path, np.full(16000 * 3, 0.25, np.float32), 16000)  # 3 s of one value: a tiny file
    assert path.stat().st_size < 5000
    monkeypatch.setenv(reading.MAX_AUDIO_ENV, "2.5")
    read = []
    real_read = sf.SoundFile.read
    monkeypatch.setattr(
        sf.SoundFile, "read", lambda self, frames=-1, **kw: read.append(frames) or real_read(self, frames, **kw)
    )
    with pytest.raises(DataError, match=re.escape(f"audio {path} is longer than 2.5 s: refused before decoding")) as e:
        reading.read_audio(path, 16000)
    assert e.value.reason == "too_large" and read == [40001]
    monkeypatch.setenv(reading.MAX_AUDIO_ENV, "3")
    assert reading.read_audio(path, 16000).shape == (48000,)  # at the limit: read
    monkeypatch.setenv(reading.MAX_AUDIO_ENV, "soon")
    with pytest.raises(ValueError, match="RECOGNIZER_MAX_AUDIO_SECONDS='soon': expected a positive number"):
        reading.read_audio(path, 16000)


def test_audio_with_more_samples_a_second_than_speech_needs_is_refused(tmp_path: Path) -> None:
    """The seconds limit bounds memory only for sane rates: 16 channels at 96 kHz are refused before reading."""
    from recognizer.data.audio import reading

    path = tmp_path / "wide.wav"
    sf.write(path, np.full((960, 16), 0.25, np.float32), 96000)
    with pytest.raises(DataError, match=re.escape(f"audio {path} has 16 channel(s) at 96000 Hz, over the 384,000")):
        reading.read_audio(path, 16000)
