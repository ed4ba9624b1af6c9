"""Unusable input files (images and audio) are audit violations with a reason: dropped and counted
under ``stability.audit_policy=drop``, each named with its file and fix under ``error``."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from recognizer.alphabet import Alphabet
from recognizer.data.audio.librispeech import read_librispeech
from recognizer.data.audio.modules import AudioManifestData, LibriSpeechData
from recognizer.data.audio.speech import filter_duration, read_audio_manifest
from recognizer.data.base import RecordDataset
from recognizer.data.images.lines import LineDataset, read_records
from recognizer.doctor import AUDIT_CODES, CAUSES
from recognizer.stability.audit import FIXES, INPUT_REASONS, AuditError
from recognizer.stability.runtime import run_audit
from tests.unit.data.test_audio import tone, write_manifest
from tests.unit.data.test_librispeech import TEXTS, write_librispeech

MODEL = SimpleNamespace(output_lengths=lambda widths: widths // 4)  # subsamples the width by 4, like the CRNN


def stability(policy: str, scan_inputs: bool = True) -> object:
    return OmegaConf.create(
        {
            "audit_policy": policy,
            "unknown": "error",
            "min_frames_per_label": 2.0,
            "max_label_length": None,
            "scan_inputs": scan_inputs,
        }
    )


def audit(dataset: RecordDataset, policy: str, scan_inputs: bool = True):
    alphabet = Alphabet.from_texts(["abcdefghijklmnopqrstuvwxyz' "])
    return run_audit("train", dataset, alphabet, MODEL, stability(policy, scan_inputs))


def counts(report) -> dict[str, int]:
    return {reason: len(ids) for reason, ids in report.violations.items()}


# --------------------------------------------------------------------------- images


def bad_images(folder: Path) -> LineDataset:
    """A kraken folder: one good line, then a corrupt PNG, an empty file, a truncated PNG and NaN/empty .npy."""
    folder.mkdir(parents=True, exist_ok=True)
    good = np.full((16, 64), 255, np.uint8)
    good[4:12, 4:60] = 0
    Image.fromarray(good).save(folder / "a_good.png")
    (folder / "b_corrupt.png").write_bytes(b"this is not a png at all")
    (folder / "c_empty.png").write_bytes(b"")
    Image.fromarray(good).save(folder / "d_truncated.png")
    data = (folder / "d_truncated.png").read_bytes()
    (folder / "d_truncated.png").write_bytes(data[: len(data) // 2])
    nan = np.full((16, 40), 0.5, np.float32)
    nan[3, 7] = np.nan
    np.save(folder / "e_nan.npy", nan)
    (folder / "f_empty.npy").write_bytes(b"")
    for name in ("a_good", "b_corrupt", "c_empty", "d_truncated", "e_nan", "f_empty"):
        (folder / f"{name}.gt.txt").write_text("ab", encoding="utf-8")
    return LineDataset(read_records(folder), height=16)


def image_messages(folder: Path) -> dict[str, str]:
    """The exact detail of each bad image (library text where libraries word it: ``.*``)."""
    f = re.escape(str(folder))
    return {
        "b_corrupt": rf"b_corrupt: cannot read image {f}/b_corrupt\.png \(sample b_corrupt\): .*\. Re-export it or "
        r"remove it from the manifest",
        "c_empty": rf"c_empty: image {f}/c_empty\.png \(sample c_empty\) is an empty file \(0 bytes\): export it "
        r"again or remove it from the manifest",
        "d_truncated": rf"d_truncated: cannot read image {f}/d_truncated\.png: image file is truncated.*\. "
        r"Re-export it or remove it from the manifest",
        "e_nan": rf"e_nan: image {f}/e_nan\.npy \(sample e_nan\) has 1 non-finite pixel value\(s\) \(NaN/Inf\): fix "
        r"or remove the file; non-finite inputs make the CTC loss NaN",
        "f_empty": rf"f_empty: image {f}/f_empty\.npy \(sample f_empty\) is an empty file \(0 bytes\): export it "
        r"again or remove it from the manifest",
    }


def test_bad_images_are_dropped_and_counted_by_reason(tmp_path: Path) -> None:
    report = audit(bad_images(tmp_path), "drop")
    assert report.kept == [0] and report.dropped == 5
    assert counts(report) == {"unreadable": 2, "empty_input": 2, "non_finite": 1}
    assert report.violations["unreadable"] == ["b_corrupt", "d_truncated"]
    details = [d for reason in report.details.values() for d in reason]
    for sample, pattern in image_messages(tmp_path).items():
        (detail,) = [d for d in details if d.startswith(f"{sample}:")]
        assert re.fullmatch(pattern, detail), detail
    assert report.counts() == {"dropped": 5, "dropped/unreadable": 2, "dropped/empty_input": 2, "dropped/non_finite": 1}


def test_bad_images_are_each_named_with_the_fix_under_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError) as e:
        audit(bad_images(tmp_path), "error")
    message = str(e.value)
    assert message.startswith("the train data breaks the CTC contract (policy=error):\naudit[train]: 6 samples")
    for pattern in image_messages(tmp_path).values():
        assert re.search(pattern, message), pattern
    for reason in ("unreadable", "empty_input", "non_finite"):
        assert f"fix: {FIXES[reason]}" in message


def test_header_problems_are_caught_without_the_input_scan(tmp_path: Path) -> None:
    """``scan_inputs=false`` skips decoding, but what the headers show is still dropped, never hit mid-training."""
    report = audit(bad_images(tmp_path), "drop", scan_inputs=False)
    assert counts(report) == {"unreadable": 1, "empty_input": 2}  # corrupt; both 0-byte files
    assert report.kept == [0, 3, 4]  # the truncated PNG and the NaN .npy have sound headers


def test_strict_widths_still_name_the_first_bad_image(tmp_path: Path) -> None:
    ds = bad_images(tmp_path)
    path = re.escape(str(tmp_path / "b_corrupt.png"))
    with pytest.raises(ValueError, match=rf"cannot read image {path} \(sample b_corrupt\)") as e:
        _ = ds.widths
    assert e.value.reason == "unreadable"
    assert ds.header_widths[0] == 64 and ds.header_widths[1] == 0 and sorted(ds.unreadable) == [1, 2, 5]


def test_a_corrupt_image_under_drop_does_not_stop_training(tmp_path: Path) -> None:
    from recognizer.train import train
    from tests.conftest import compose_config
    from tests.helpers.runs import lines_overrides, write_lines

    manifest = write_lines(tmp_path / "lines", {"ok": "abc", "ok2": "cab", "ok3": "ba", "corrupt": "ab"})
    (tmp_path / "lines" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "run"
    overrides = lines_overrides(manifest, out, "stability.audit_policy=drop")
    metrics = train(compose_config("train", overrides))
    assert metrics["train/dropped"] == 1 and metrics["train/dropped/unreadable"] == 1
    assert metrics["val/dropped"] == 1
    train_report = json.loads((out / "audit.json").read_text())[0]
    assert train_report["kept"] == 3 and train_report["violations"]["unreadable"]["count"] == 1
    assert json.loads((out / "metrics.json").read_text())["train/dropped/unreadable"] == 1


# --------------------------------------------------------------------------- audio


def bad_audio(folder: Path, resample: bool = False) -> tuple[AudioManifestData, Path]:
    """A manifest of one good utterance and one of each bad kind, as 16 kHz WAV unless said otherwise."""
    nan = tone(0.5, seed=2)
    nan[100:103] = np.nan
    items = {
        "a_good": (tone(0.5), 16000, "ab"),
        "b_silent": (np.zeros(8000, np.float32), 16000, "ab"),
        "c_truncated": (tone(0.5, seed=1), 16000, "ab"),
        "d_nan": (nan, 16000, "ab"),
        "e_rate": (tone(0.5, 8000, seed=3), 8000, "ab"),
        "f_zero_samples": (np.zeros(0, np.float32), 16000, "ab"),
        "g_corrupt": (tone(0.5, seed=4), 16000, "ab"),
        "h_empty_file": (tone(0.5, seed=5), 16000, "ab"),
        "i_missing": (tone(0.5, seed=6), 16000, "ab"),
    }
    manifest = write_manifest(folder, items, fmt="wav", subtype="FLOAT")  # FLOAT keeps the NaN
    audio = folder / "audio"
    data = (audio / "c_truncated.wav").read_bytes()
    (audio / "c_truncated.wav").write_bytes(data[: len(data) // 2])
    (audio / "g_corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(64))
    (audio / "h_empty_file.wav").write_bytes(b"")
    (audio / "i_missing.wav").unlink()
    return AudioManifestData(str(manifest), None, resample=resample, spec_augment=None), audio


def audio_messages(audio: Path) -> dict[str, str]:
    a = re.escape(str(audio))
    return {
        "silent": rf"audio/b_silent\.wav: audio {a}/b_silent\.wav is silent \(all 8000 samples are 0\): remove it "
        r"from the manifest",
        "truncated": rf"audio/c_truncated\.wav: audio {a}/c_truncated\.wav is truncated: its WAV header declares "
        r"\d+ more bytes of audio than the file holds \(an interrupted copy or download\?\): copy it again or "
        r"remove it from the manifest, or, if the corpus is published so, set data\.max_missing_ms \(now 0\) to at "
        r"least \d+ to read the audio it holds",
        "non_finite": rf"audio/d_nan\.wav: audio {a}/d_nan\.wav has 3 non-finite sample\(s\) \(NaN/Inf\): fix or "
        r"remove the file; non-finite inputs make the CTC loss NaN",
        "wrong_rate": rf"audio/e_rate\.wav: audio {a}/e_rate\.wav \(utterance audio/e_rate\.wav\) is sampled at "
        r"8000 Hz but the model expects 16000 Hz: set data\.resample=true, or resample the file, or set "
        r"data\.sample_rate=8000",
        "empty_input": rf"audio/f_zero_samples\.wav: audio {a}/f_zero_samples\.wav \(utterance "
        r"audio/f_zero_samples\.wav\) is empty \(0 samples\): remove it from the manifest",
        "unreadable": rf"audio/g_corrupt\.wav: cannot read audio {a}/g_corrupt\.wav: .*\. Supported formats are "
        r"those of libsndfile \(WAV, FLAC, OGG/Vorbis, MP3, \.\.\.\); convert the file \(e\.g\. to 16-bit FLAC\) "
        r"or remove it",
        "empty_file": rf"audio/h_empty_file\.wav: audio {a}/h_empty_file\.wav is an empty file \(0 bytes\): remove "
        r"it from the manifest",
        "missing_file": rf"audio/i_missing\.wav: audio file {a}/i_missing\.wav does not exist: fix the path or "
        r"remove it from the manifest",
    }


def test_bad_audio_is_dropped_and_counted_by_reason(tmp_path: Path) -> None:
    data, audio = bad_audio(tmp_path)
    report = audit(data.dataset("train"), "drop")
    assert report.kept == [0] and report.dropped == 8
    assert counts(report) == {
        "silent": 1,
        "truncated": 1,
        "non_finite": 1,
        "wrong_rate": 1,
        "empty_input": 2,
        "unreadable": 1,
        "missing_file": 1,
    }
    details = [d for reason in report.details.values() for d in reason]
    for pattern in audio_messages(audio).values():
        assert sum(bool(re.fullmatch(pattern, d)) for d in details) == 1, pattern


def test_bad_audio_is_each_named_with_the_fix_under_error(tmp_path: Path) -> None:
    data, audio = bad_audio(tmp_path)
    with pytest.raises(AuditError) as e:
        audit(data.dataset("train"), "error")
    message = str(e.value)
    for pattern in audio_messages(audio).values():
        assert re.search(pattern, message), pattern
    for reason in ("silent", "truncated", "non_finite", "wrong_rate", "empty_input", "unreadable", "missing_file"):
        assert f"fix: {FIXES[reason]}" in message


def test_a_wrong_rate_is_fine_when_resampling_is_on(tmp_path: Path) -> None:
    data, _ = bad_audio(tmp_path, resample=True)
    report = audit(data.dataset("train"), "drop")
    assert "wrong_rate" not in report.violations and 4 in report.kept


def test_an_unreadable_librispeech_file_is_the_audits_to_drop(tmp_path: Path) -> None:
    root = tmp_path / "LibriSpeech"
    write_librispeech(root, "dev-clean", TEXTS[:4])
    (root / "dev-clean" / "19" / "198" / "19-198-0001.flac").write_bytes(b"fLaC" + bytes(50))
    records = read_librispeech(root, ["dev-clean"])  # reading the layout no longer stops at the file
    assert [np.isnan(r.duration) for r in records] == [False, True, False, False]
    assert filter_duration(records, None, 20.0, "val data") == records  # unknown duration: kept for the audit
    data = LibriSpeechData(str(root), train=[], val=["dev-clean"], max_duration=20.0, spec_augment=None)
    report = audit(data.dataset("val"), "drop")
    assert report.violations == {"unreadable": ["19-198-0001"]}


def test_duration_filter_on_val_and_test_warns_and_is_counted(tmp_path: Path, caplog) -> None:
    manifest = write_manifest(tmp_path, {f"u{i}": (tone(0.2 * (i + 1), seed=i), 16000, "ab") for i in range(4)})
    data = AudioManifestData(str(manifest), str(manifest), str(manifest), max_duration=0.5, spec_augment=None)
    with caplog.at_level(logging.INFO, logger="recognizer.data.audio.speech"):
        train_set, test_set = data.dataset("train"), data.dataset("test")
    levels = {r.message.split(":")[0]: r.levelname for r in caplog.records}
    assert levels == {"train data": "INFO", "test data": "WARNING"}
    assert (
        "test data: dropped 2 of 4 utterances outside data.min_duration=None .. data.max_duration=0.5 s; they are "
        "not scored (counted as filtered/duration in audit.json and metrics.json)" in caplog.text
    )
    assert len(test_set) == 2 and dict(test_set.filtered) == {"duration": 2}
    report = audit(test_set, "drop")
    assert report.counts() == {"dropped": 0, "filtered/duration": 2}
    assert report.to_dict()["filtered"] == {"duration": 2}
    assert len(read_audio_manifest(manifest)) == 4 and dict(train_set.filtered) == {"duration": 2}


def test_every_audit_reason_has_a_doctor_code_and_a_cause() -> None:
    assert set(AUDIT_CODES) == set(FIXES)
    assert set(INPUT_REASONS) <= set(FIXES)
    assert all(code in CAUSES for code in AUDIT_CODES.values())


def test_the_doctor_reports_unusable_inputs(tmp_path: Path) -> None:
    from recognizer.doctor import audit_verdicts

    verdicts = {v.code: v for v in audit_verdicts([audit(bad_images(tmp_path), "drop")], "error")}
    assert verdicts["unreadable_inputs"].severity == "blocking"
    assert verdicts["unreadable_inputs"].evidence.startswith("train: unreadable × 2 (e.g. b_corrupt: cannot read image")
    assert verdicts["non_finite_inputs"].severity == "blocking"
