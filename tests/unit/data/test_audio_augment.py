"""Waveform augmentation of training recordings: speed and noise, drawn per (seed, epoch, sample)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recognizer.alphabet import Alphabet
from recognizer.data.audio.augment import WaveAugment, change_speed
from recognizer.data.audio.modules import FSDDData
from recognizer.data.batching import SampleKey
from recognizer.data.loaders import make_loader
from tests.conftest import compose_config
from tests.unit.data.test_audio_layouts import tone, write_fsdd


def peak_hz(wave: np.ndarray, rate: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(wave)))) * rate / len(wave)


def test_same_seed_epoch_and_sample_give_the_same_wave_and_each_epoch_draws_anew() -> None:
    aug = WaveAugment(enabled=True, speed=0.2, noise_p=1.0)
    wave = tone(0.5, 16000)
    a, b = aug(wave, 100, 7, 3, 11), aug(wave.copy(), 100, 7, 3, 11)
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, aug(wave, 100, 7, 4, 11))  # another epoch
    assert not np.array_equal(a, aug(wave, 100, 7, 3, 12))  # another utterance
    assert not np.array_equal(a, aug(wave, 100, 8, 3, 11))  # another run seed


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_speed_moves_the_pitch_and_the_length(factor: float) -> None:
    wave = tone(0.5, 16000, freq=1000.0)
    played = change_speed(wave, factor)
    assert played.dtype == np.float32 and len(played) == pytest.approx(len(wave) / factor, abs=1)
    assert peak_hz(played, 16000) == pytest.approx(1000.0 * factor, rel=0.01)
    assert change_speed(wave, 1.001) is wave  # within a step of 1: untouched


def test_the_width_never_shrinks_and_lost_samples_come_back_as_silence() -> None:
    wave = tone(0.5, 16000, freq=1000.0)
    aug = WaveAugment(enabled=True, speed=0.3, noise_p=0.0)
    lengths = set()
    for epoch in range(40):
        out = aug(wave, 800, 0, epoch, 0)
        assert len(out) >= len(wave) + 1600  # never below the width the audit checked
        lengths.add(len(out))
        played = np.flatnonzero(np.abs(out) > 0.05)  # the tone, without the silence around it
        assert played[0] >= 800 - 2 and played[-1] < len(out) - 800 + 2  # the padding stays silent
    assert min(lengths) == len(wave) + 1600 and max(lengths) > len(wave) + 1600  # faster: padded back; slower: longer


def test_noise_has_the_drawn_snr_and_covers_the_padding(monkeypatch: pytest.MonkeyPatch) -> None:
    wave = tone(1.0, 16000)
    aug = WaveAugment(enabled=True, speed=0.0, noise_p=1.0, snr_db=(20.0, 20.0))
    out = aug(wave, 1000, 0, 0, 0)
    assert len(out) == len(wave) + 2000
    noise = out[1000:-1000] - wave
    snr = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))
    assert snr == pytest.approx(20.0, abs=0.3)
    assert np.std(out[:1000]) == pytest.approx(np.std(noise), rel=0.15)  # the silence is noisy too
    quiet = WaveAugment(enabled=True, speed=0.0, noise_p=0.0)(wave, 1000, 0, 0, 0)
    assert np.array_equal(quiet, np.pad(wave, (1000, 1000)))  # nothing drawn: only the padding


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"speed": 0.6}, r"data\.wave_augment\.speed must be in \[0, 0\.5\], got 0\.6"),
        ({"noise_p": 1.5}, r"data\.wave_augment\.noise_p must be in \[0, 1\], got 1\.5"),
        ({"snr_db": (30.0, 10.0)}, r"data\.wave_augment\.snr_db must be \[low, high\] with -20 <= low <= high"),
    ],
)
def test_bad_settings_name_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WaveAugment(**kwargs)


def test_only_sample_keys_of_the_train_split_augment_and_cached_waves_repeat(tmp_path: Path) -> None:
    root = write_fsdd(tmp_path)
    aug = WaveAugment(enabled=True, speed=0.1, noise_p=1.0)
    data = FSDDData(str(root), spec_augment=None, wave_augment=aug, pad_ms=100.0, cache=True)
    train, val = data.dataset("train"), data.dataset("val")
    assert train.augmented and not val.augmented
    stored = train.load(2)
    assert torch.equal(train[2]["input"], stored)  # a plain index (audit, evaluation): as stored
    assert torch.equal(val[SampleKey(2, 0, 0)]["input"], val.load(2))  # val never augments
    first = train[SampleKey(2, 5, 1)]
    assert first["text"] == train.records[2].text and first["input"].shape[:2] == stored.shape[:2]
    assert first["input"].shape[-1] >= train.widths[2]  # the audited width holds
    assert not torch.equal(first["input"][..., : stored.shape[-1]], stored)
    assert 2 in train._waves  # cached: the second draw decodes nothing and repeats the first
    assert torch.equal(train[SampleKey(2, 5, 1)]["input"], first["input"])
    off = FSDDData(str(root), spec_augment=None, wave_augment=WaveAugment(enabled=False))
    assert off.wave_augment is None and not off.dataset("train").augmented


def test_workers_do_not_change_the_augmented_batches(tmp_path: Path) -> None:
    root = write_fsdd(tmp_path, speakers=("alice",), digits=(0, 3))
    data = FSDDData(str(root), spec_augment=None, wave_augment=WaveAugment(enabled=True, speed=0.1, noise_p=0.5))
    train = data.dataset("train")

    def batches(workers: int) -> list:
        indices = list(range(len(train)))
        alphabet = Alphabet("eorthz")
        loader, sampler = make_loader(train, indices, alphabet, 4, True, 5, "error", num_workers=workers, augment=True)
        sampler.set_epoch(1)
        return [(b.ids, b.inputs) for b in loader]

    one, two = batches(0), batches(2)
    assert [ids for ids, _ in one] == [ids for ids, _ in two]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(one, two))


def test_config_is_off_by_default_and_on_in_the_fsdd_recipes() -> None:
    assert compose_config("train", ["data=audio_manifest"]).data.wave_augment.enabled is False
    assert compose_config("train", ["data=fsdd"]).data.wave_augment.enabled is False
    for recipe in ("asr_fsdd_crnn", "asr_fsdd_crnn_speaker"):
        cfg = compose_config("train", [f"experiment={recipe}"])
        assert cfg.data.wave_augment.enabled is True, recipe
