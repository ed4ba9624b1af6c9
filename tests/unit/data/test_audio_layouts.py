"""Speech corpora read in their own layouts: sidecar-transcript folders and FSDD, with resampling."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra.utils import instantiate

from recognizer.data.audio.layouts import read_fsdd, read_sidecar_folder
from recognizer.data.audio.modules import AudioFolderData, FSDDData, MboshiData
from recognizer.data.audio.reading import audio_info, resample_wave, resampled_length
from recognizer.data.audio.spoken_digits import WORDS
from recognizer.data.base import DataError
from recognizer.stability.audit import AuditError
from tests.conftest import compose_config, tiny_speech_overrides


def tone(seconds: float, rate: int, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def write_fsdd(root: Path, speakers=("alice", "bob", "carol"), digits=(0, 3, 7), takes: int = 12) -> Path:
    """A tiny FSDD checkout: ``recordings/{digit}_{speaker}_{index}.wav`` at 8 kHz, 0.2-0.3 s each."""
    folder = root / "recordings"
    folder.mkdir(parents=True)
    for s, speaker in enumerate(speakers):
        for digit in digits:
            for i in range(takes):
                seconds = 0.2 + 0.01 * (i % 10)
                sf.write(
                    folder / f"{digit}_{speaker}_{i}.wav", tone(seconds, 8000, 300 + 50 * s), 8000, subtype="PCM_16"
                )
    return root


MBOSHI = {  # split → (name, transcript): Mboshi's real file-name pattern and letters (acute vowels, Greek ε/ω)
    "train": [
        ("abiayi_2015-09-08-11-18-39_samsung-SM-T530_mdw_elicit_Dico18_1", "wáá ngá"),
        ("kouarata_2016-02-18-11-17-35_samsung-SM-T530_mdw_elicit_Part3_181", "ɔ́ndέ mbώ"),
    ],
    "dev": [("martial_2015-09-10-11-25-36_samsung-SM-T530_mdw_elicit_Dico7_4", "mbá ngώ")],  # letters of train
}


def write_mboshi(root: Path, short_bytes: int = 726) -> Path:
    """A tiny Mboshi checkout: ``full_corpus_newsplit/{train,dev}/NAME.wav`` + ``NAME.mb.cleaned`` + ``NAME.fr``.

    The last train WAV ends ``short_bytes`` short of its header, as 78 of the real corpus's files do.
    """
    for split, items in MBOSHI.items():
        folder = root / "full_corpus_newsplit" / split
        folder.mkdir(parents=True)
        for i, (name, text) in enumerate(items):
            sf.write(folder / f"{name}.wav", tone(1.0, 16000, 300 + 100 * i, seed=i), 16000, subtype="PCM_16")
            (folder / f"{name}.mb.cleaned").write_text(f"{text}\n", encoding="utf-8")
            (folder / f"{name}.fr").write_text("une phrase en français\n", encoding="utf-8")
    wav = root / "full_corpus_newsplit" / "train" / f"{MBOSHI['train'][-1][0]}.wav"
    wav.write_bytes(wav.read_bytes()[:-short_bytes])
    return root


def keys(records) -> set[tuple[str, int, str]]:
    """(speaker, index, digit word) per record, from its file name and transcript."""
    out = set()
    for r in records:
        digit, speaker, index = r.path.stem.split("_")
        assert r.text == WORDS[int(digit)]  # the transcript is the digit as a word
        out.add((speaker, int(index), r.text))
    return out


# --- sidecar transcripts ------------------------------------------------------------------------


def test_sidecar_folder_pairs_each_recording_with_its_transcript(tmp_path: Path) -> None:
    (tmp_path / "spk1").mkdir()
    sf.write(tmp_path / "a.wav", tone(0.5, 16000), 16000)
    (tmp_path / "a.txt").write_text("one  two\n", encoding="utf-8")
    sf.write(tmp_path / "spk1" / "b.wav", tone(0.25, 8000), 8000)
    (tmp_path / "spk1" / "b.txt").write_text("\ufeffthree\nfour\n", encoding="utf-8")  # BOM, two lines
    records = read_sidecar_folder(tmp_path)
    assert [(r.id, r.text, r.duration) for r in records] == [("a", "one two", 0.5), ("spk1/b", "three four", 0.25)]


def test_sidecar_extension_is_configurable_as_for_mboshi(tmp_path: Path) -> None:
    sf.write(tmp_path / "abiayi_2015-09-08-11-21-24_samsung-SM-T530_mdw_elicit_Dico18_2.wav", tone(0.5, 16000), 16000)
    stem = tmp_path / "abiayi_2015-09-08-11-21-24_samsung-SM-T530_mdw_elicit_Dico18_2"
    Path(f"{stem}.mb.cleaned").write_text("wáá ngá\n", encoding="utf-8")
    Path(f"{stem}.fr").write_text("je suis\n", encoding="utf-8")  # the translation beside it is ignored
    data = AudioFolderData(str(tmp_path), None, transcript_ext=".mb.cleaned", spec_augment=None)
    ds = data.dataset("train")
    assert ds.texts == ["wáá ngá"] and ds.widths == [51]
    assert ds[0]["input"].shape == (1, 80, 51)


def test_sidecar_folder_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", tone(0.5, 16000), 16000)
    with pytest.raises(
        DataError, match=r"a\.wav has no transcript .*a\.txt: write one beside it.*data\.transcript_ext"
    ):
        read_sidecar_folder(tmp_path)
    with pytest.raises(DataError, match=r"holds no \*\.flac recordings: set data\.audio_ext"):
        read_sidecar_folder(tmp_path, audio_ext=".flac")
    with pytest.raises(DataError, match=r"audio folder .*missing does not exist"):
        read_sidecar_folder(tmp_path / "missing")


def test_a_wav_short_of_its_header_is_read_within_max_missing_ms(tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    sf.write(wav, tone(1.0, 16000), 16000, subtype="PCM_16")
    wav.write_bytes(wav.read_bytes()[:-726])  # 363 samples (22.7 ms) missing, as in the Mboshi corpus
    with pytest.raises(
        DataError,
        match=r"a\.wav is truncated: its WAV header declares 726 more bytes of audio than the file holds .*: copy "
        r"it again or remove it from the manifest, or, if the corpus is published so, set data\.max_missing_ms "
        r"\(now 0\) to at least 23 to read the audio it holds",
    ):
        audio_info(wav)
    with pytest.raises(DataError, match=r"max_missing_ms \(now 20\) to at least 23"):
        audio_info(wav, max_missing_ms=20)
    assert audio_info(wav, max_missing_ms=23) == (16000 - 363, 16000)  # the audio the file holds
    (tmp_path / "whole").mkdir()
    sf.write(tmp_path / "whole" / "b.wav", tone(0.5, 16000), 16000)
    (tmp_path / "whole" / "b.txt").write_text("ab", encoding="utf-8")
    with pytest.raises(ValueError, match=r"data\.max_missing_ms must be >= 0, got -1"):
        AudioFolderData(str(tmp_path / "whole"), None, max_missing_ms=-1).dataset("train")


def test_mboshi_config_reads_the_corpus_as_published(tmp_path: Path) -> None:
    root = write_mboshi(tmp_path / "mboshi")
    cfg = compose_config("train", ["data=mboshi", f"data.root={root}"])
    data = instantiate(cfg.data)
    train, val = data.dataset("train"), data.dataset("val")  # val: a share of train (one of the two here)
    pool = {r.id: (ds, i) for ds in (train, val) for i, r in enumerate(ds.records)}
    assert len(train) == len(val) == 1 and sorted(pool) == sorted(n for n, _ in MBOSHI["train"])
    for name, text in MBOSHI["train"]:  # .mb.cleaned as written: no case or NFC change
        ds, i = pool[name]
        assert ds.texts[i] == text
    full, short = (pool[name] for name, _ in MBOSHI["train"])
    assert full[0].widths[full[1]] == 101 and short[0].widths[short[1]] < 101  # the short file: the audio it holds
    assert short[0][short[1]]["input"].shape == (1, 80, short[0].widths[short[1]])
    assert data.dataset("test").texts == ["mbá ngώ"]  # the corpus's dev is scored once, as test
    with pytest.raises(DataError, match=r"Part3_181\.wav is truncated: .*set data\.max_missing_ms \(now 0\)"):
        _ = instantiate(cfg.data, max_missing_ms=0).dataset("train").widths  # listed; the header read names it


def test_audio_folder_root_prefixes_relative_split_paths_only(tmp_path: Path) -> None:
    root = write_mboshi(tmp_path / "mboshi")
    dev = root / "full_corpus_newsplit" / "dev"
    data = AudioFolderData("full_corpus_newsplit/train", str(dev), root=str(root), transcript_ext=".mb.cleaned")
    assert data.sources == {"train": str(root / "full_corpus_newsplit/train"), "val": str(dev), "test": None}


def test_bad_recordings_in_a_folder_are_dropped_and_counted_under_drop(tmp_path: Path) -> None:
    """A corrupt, truncated or silent file in an audio folder does not stop the listing: the audit decides."""
    from recognizer.train import train

    folder = tmp_path / "speech"
    folder.mkdir()
    for i, text in enumerate(["one two", "three", "four one"]):
        sf.write(folder / f"u{i}.wav", tone(1.0, 16000, 300 + 100 * i, seed=i), 16000, subtype="PCM_16")
        (folder / f"u{i}.txt").write_text(text, encoding="utf-8")
    (folder / "corrupt.wav").write_bytes(b"RIFF not really a wave file" * 40)
    sf.write(folder / "cut.wav", tone(1.0, 16000), 16000, subtype="PCM_16")
    (folder / "cut.wav").write_bytes((folder / "cut.wav").read_bytes()[:-8000])  # 250 ms short of its header
    sf.write(folder / "quiet.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    for name in ("corrupt", "cut", "quiet"):
        (folder / f"{name}.txt").write_text("two", encoding="utf-8")
    records = {r.id: r.duration for r in read_sidecar_folder(folder)}
    assert np.isnan(records["corrupt"]) and np.isnan(records["cut"]) and records["quiet"] == 1.0
    out = tmp_path / "run"
    overrides = tiny_speech_overrides("audio_folder", folder, folder, out)
    assert "val/cer" in train(compose_config("train", [*overrides, "stability.audit_policy=drop"]))
    report = json.loads((out / "audit.json").read_text())[0]
    assert report["kept"] == 3 and report["dropped"] == 3
    assert {k: v["count"] for k, v in report["violations"].items()} == {"unreadable": 1, "truncated": 1, "silent": 1}
    strict = tiny_speech_overrides("audio_folder", folder, folder, tmp_path / "strict_run")
    with pytest.raises(AuditError, match=r"corrupt\.wav"):
        train(compose_config("train", [*strict, "stability.audit_policy=error"]))


def test_fsdd_lists_a_corrupt_recording_for_the_audit_to_name(tmp_path: Path) -> None:
    root = write_fsdd(tmp_path / "fsdd")
    (root / "recordings" / "3_bob_10.wav").write_bytes(b"\x00" * 100)
    data = FSDDData(str(root), sample_rate=8000, resample=False, spec_augment=None)
    train = data.dataset("train")
    bad = train.ids.index("3_bob_10")
    assert np.isnan(train.records[bad].duration) and list(train.unreadable) == [bad]
    assert train.unreadable[bad].reason == "unreadable" and "3_bob_10.wav" in str(train.unreadable[bad])


# --- FSDD ---------------------------------------------------------------------------------------


def test_fsdd_standard_split_is_takes_0_to_4_with_no_leakage(tmp_path: Path) -> None:
    root = write_fsdd(tmp_path)
    split = {s: keys(read_fsdd(root, s)) for s in ("train", "val", "test")}
    assert {i for _, i, _ in split["test"]} == {0, 1, 2, 3, 4}  # the dataset README's test split
    assert {i for _, i, _ in split["val"]} == {5, 6, 7, 8, 9}
    assert {i for _, i, _ in split["train"]} == {10, 11}
    assert sum(map(len, split.values())) == 3 * 3 * 12  # every recording once
    assert not (split["train"] & split["val"]) and not (split["train"] | split["val"]) & split["test"]
    assert {w for _, _, w in split["train"]} == {"zero", "three", "seven"}


def test_fsdd_held_out_speaker_is_never_trained_or_validated_on(tmp_path: Path) -> None:
    root = write_fsdd(tmp_path)
    split = {s: keys(read_fsdd(root, s, scheme="speaker", test_speaker="bob")) for s in ("train", "val", "test")}
    assert {spk for spk, _, _ in split["test"]} == {"bob"} and len(split["test"]) == 3 * 12
    assert {spk for spk, _, _ in split["train"] | split["val"]} == {"alice", "carol"}
    assert {i for _, i, _ in split["val"]} == {5, 6, 7, 8, 9} and not split["train"] & split["val"]
    assert sum(map(len, split.values())) == 3 * 3 * 12


def test_fsdd_errors_name_the_fix(tmp_path: Path) -> None:
    root = write_fsdd(tmp_path)
    with pytest.raises(
        DataError, match=r"test_speaker='dave' is not an FSDD speaker; the speakers are \['alice', 'bob', 'carol'\]"
    ):
        read_fsdd(root, "test", scheme="speaker", test_speaker="dave")
    with pytest.raises(DataError, match=r"val_indices=\[3, 6\] overlap the standard test indices 0-4"):
        read_fsdd(root, "val", val_indices=(3, 6))
    with pytest.raises(DataError, match=r"data\.scheme must be one of \('standard', 'speaker'\), got 'random'"):
        read_fsdd(root, "train", scheme="random")
    with pytest.raises(DataError, match=r"FSDD recordings not found at .*nowhere/recordings: clone https://github"):
        read_fsdd(tmp_path / "nowhere", "train")
    sf.write(root / "recordings" / "seven_bob_1.wav", tone(0.2, 8000), 8000)
    with pytest.raises(
        DataError, match=r"seven_bob_1\.wav does not follow FSDD's \{digit\}_\{speaker\}_\{index\}\.wav"
    ):
        read_fsdd(root, "train")
    with pytest.raises(ValueError, match=r"data=fsdd defines its splits by data\.scheme"):
        FSDDData(str(root), train="x.jsonl")


# --- resampling and padding ---------------------------------------------------------------------


def test_fsdd_is_resampled_to_the_model_rate_and_logged_once_per_split(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_fsdd(tmp_path)
    data = FSDDData(str(root), sample_rate=16000, resample=True, spec_augment=None)
    with caplog.at_level(logging.INFO, logger="recognizer.data.audio.speech"):
        ds = data.dataset("train")
        widths = ds.widths
    said = [r.getMessage() for r in caplog.records if "resampling" in r.getMessage()]
    assert said == [
        "resampling 18 of 18 recordings (18 at 8000 Hz) to the model's 16000 Hz (polyphase; data.resample=true)"
    ]
    for i, r in enumerate(ds.records):
        n = sf.info(str(r.path)).frames
        assert widths[i] == 1 + resampled_length(n, 8000, 16000) // 160 == ds.load(i).shape[-1]


def test_wrong_rate_with_resampling_off_is_an_error_naming_file_and_fix(tmp_path: Path) -> None:
    root = write_fsdd(tmp_path)
    ds = FSDDData(str(root), sample_rate=16000, resample=False, spec_augment=None).dataset("val")
    with pytest.raises(
        DataError,
        match=r"0_alice_5\.wav \(utterance 0_alice_5\) is sampled at 8000 Hz but the model "
        r"expects 16000 Hz: set data\.resample=true",
    ):
        _ = ds.widths
    at_8k = FSDDData(str(root), sample_rate=8000, resample=False, spec_augment=None).dataset("val")
    assert at_8k.load(0).shape[-1] == at_8k.widths[0]  # at the files' own rate nothing is resampled


def test_polyphase_resampling_keeps_the_pitch_and_the_promised_length() -> None:
    wave = tone(0.5, 8000, freq=1000.0)
    up = resample_wave(wave, 8000, 16000)
    assert up.dtype == np.float32 and len(up) == resampled_length(len(wave), 8000, 16000) == 8000
    spectrum = np.abs(np.fft.rfft(up))
    assert np.argmax(spectrum) * 16000 / len(up) == pytest.approx(1000.0, abs=2.0)
    assert len(resample_wave(tone(0.73, 22050), 22050, 16000)) == resampled_length(round(0.73 * 22050), 22050, 16000)


def test_padding_adds_silent_frames_on_both_sides(tmp_path: Path) -> None:
    root = write_fsdd(tmp_path)
    plain = FSDDData(str(root), spec_augment=None, normalize="none").dataset("test")
    padded = FSDDData(str(root), spec_augment=None, normalize="none", pad_ms=200.0).dataset("test")
    assert padded.widths[0] == 1 + (resampled_length(1600, 8000, 16000) + 2 * 3200) // 160 == plain.widths[0] + 40
    x = padded.load(0)[0]  # (n_mels, frames)
    assert x.shape[-1] == padded.widths[0]
    floor = float(np.log(1e-6))
    assert torch.allclose(x[:, :15], torch.full_like(x[:, :15], floor))  # 200 ms of zeros: the log floor
    assert torch.allclose(x[:, -15:], torch.full_like(x[:, -15:], floor))
    with pytest.raises(ValueError, match=r"data\.pad_ms must be >= 0, got -1"):
        FSDDData(str(root), pad_ms=-1.0).dataset("test")


# --- Mboshi -------------------------------------------------------------------------------------


def write_mboshi_speakers(root: Path) -> Path:
    """A corpus in Mboshi's layout: SPEAKER_DATE_..._N.wav + .mb.cleaned in train/ and dev/."""
    counts = {"train": {"abiayi": 12, "kouarata": 6, "martial": 3}, "dev": {"abiayi": 3, "kouarata": 2, "martial": 1}}
    for split, speakers in counts.items():
        folder = root / "full_corpus_newsplit" / split
        folder.mkdir(parents=True)
        for speaker, n in speakers.items():
            for i in range(n):
                name = f"{speaker}_2015-09-08-11-18-{i:02d}_samsung-SM-T530_mdw_elicit_{split}_{i}"
                sf.write(folder / f"{name}.wav", tone(0.5, 16000, seed=i), 16000, subtype="PCM_16")
                (folder / f"{name}.mb.cleaned").write_text("ngá", encoding="utf-8")
    return root


@pytest.mark.parametrize("scheme", ["utterance", "speaker"])
def test_mboshi_validation_never_touches_the_test_split(tmp_path: Path, scheme: str) -> None:
    root = write_mboshi_speakers(tmp_path / "mboshi")
    data = MboshiData(str(root), scheme=scheme, val_fraction=0.25, transcript_ext=".mb.cleaned")
    splits = {s: {r.id for r in data.records(s)} for s in ("train", "val", "test")}
    assert not (splits["train"] & splits["val"] or splits["train"] & splits["test"] or splits["val"] & splits["test"])
    assert sum(len(ids) for ids in splits.values()) == 27  # every recording in exactly one split
    dev = {r.id for r in read_sidecar_folder(root / "full_corpus_newsplit" / "dev", transcript_ext=".mb.cleaned")}
    if scheme == "utterance":  # test is the corpus's dev, validation a quarter of train
        assert splits["test"] == dev and len(splits["val"]) == round(0.25 * 21)
    else:  # test is every sentence of the held-out speaker, from both folders; nobody else's
        assert len(splits["test"]) == 4 and all(i.startswith("martial_") for i in splits["test"])
        assert not any(i.startswith("martial_") for i in splits["train"] | splits["val"])
        assert len(splits["val"]) == round(0.25 * 23)
    again = MboshiData(str(root), scheme=scheme, val_fraction=0.25, transcript_ext=".mb.cleaned")
    assert {r.id for r in again.records("val")} == splits["val"]  # seeded: the same sentences every run
    other = MboshiData(str(root), scheme=scheme, val_fraction=0.25, split_seed=1, transcript_ext=".mb.cleaned")
    assert {r.id for r in other.records("val")} != splits["val"]


def test_mboshi_config_composes_to_disjoint_splits_and_refuses_bad_options(tmp_path: Path) -> None:
    root = write_mboshi_speakers(tmp_path / "mboshi")
    cfg = compose_config("train", ["data=mboshi", f"data.root={root}", f"paths.output_dir={tmp_path}"])
    data = instantiate(cfg.data)
    assert isinstance(data, MboshiData) and len(data.records("test")) == 6 and len(data.records("val")) == 2
    with pytest.raises(ValueError, match=r"data.test_speaker='nobody' has no recording; the speakers are"):
        MboshiData(str(root), scheme="speaker", test_speaker="nobody", transcript_ext=".mb.cleaned").records("train")
    with pytest.raises(ValueError, match=r"data.scheme must be one of utterance, speaker, got 'dev'"):
        MboshiData(str(root), scheme="dev")
    with pytest.raises(ValueError, match=r"data=mboshi defines its splits by data.scheme"):
        MboshiData(str(root), val="full_corpus_newsplit/dev")
