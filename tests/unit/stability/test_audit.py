"""Tests for recognizer.stability.audit.audit_split: every CTC-contract violation, both policies."""

import json

import numpy as np
import pytest
import torch

from recognizer.alphabet import Alphabet
from recognizer.data.images.lines import DataError
from recognizer.stability.audit import FIXES, AuditError, audit_split, write_reports

ALPHABET = Alphabet.from_texts(["abc "])
ALPHABET_UNK = Alphabet.from_texts(["abc "], with_unk=True)


def output_lengths(widths):
    return widths // 4  # a model that subsamples the width by 4


def audit(ids, texts, widths, **kwargs):
    kwargs.setdefault("alphabet", ALPHABET)
    return audit_split("train", ids, texts, widths, output_lengths=output_lengths, **kwargs)


def test_clean_split():
    report = audit(["a", "b"], ["abc", "a b"], [40, 80])
    assert report.kept == [0, 1]
    assert report.total == 2
    assert report.dropped == 0
    assert report.violations == {}
    # frames: 10 and 20; labels: 3 and 3
    assert report.stats["label_len_mean"] == 3
    assert report.stats["label_len_max"] == 3
    assert report.stats["frames_per_label_min"] == pytest.approx(10 / 3)
    assert report.stats["frames_per_label_mean"] == pytest.approx((10 / 3 + 20 / 3) / 2)


def test_empty_transcript_error():
    with pytest.raises(AuditError) as e:
        audit(["ok", "blank-line"], ["ab", ""], [40, 40])
    msg = str(e.value)
    assert "empty" in msg
    assert "blank-line" in msg
    assert "policy=error" in msg


def test_empty_transcript_drop():
    report = audit(["ok", "blank-line", "ok2"], ["ab", "", "c"], [40, 40, 40], policy="drop")
    assert report.violations == {"empty": ["blank-line"]}
    assert report.kept == [0, 2]
    assert report.dropped == 1
    assert report.to_dict()["violations"]["empty"]["count"] == 1


def test_unknown_symbol_error_names_sample():
    with pytest.raises(AuditError) as e:
        audit(["s1", "has-z"], ["ab", "abz"], [40, 40])
    msg = str(e.value)
    assert "unknown_symbol" in msg
    assert "has-z" in msg
    assert "'z'" in msg


def test_unknown_symbol_under_drop_policy_says_which_key_to_set():
    """audit_policy=drop is already set: the message must point at stability.unknown, not at the policy."""
    with pytest.raises(AuditError) as e:
        audit(["s1", "has-z"], ["ab", "abz"], [40, 40], policy="drop")
    msg = str(e.value)
    assert msg.startswith("the train data has symbols outside the alphabet (stability.unknown=error):\n")
    assert msg.endswith("Add them to the alphabet, or set stability.unknown=drop (skip those samples) or =unk.")
    assert "audit_policy=drop" not in msg


def test_unknown_symbol_drop():
    # unknown=drop drops the sample even under policy=error
    report = audit(["s1", "has-z"], ["ab", "abz"], [40, 40], unknown="drop")
    assert report.violations == {"unknown_symbol": ["has-z"]}
    assert report.kept == [0]


def test_unknown_symbol_unk_is_kept():
    report = audit(["s1", "has-z"], ["ab", "abz"], [40, 40], unknown="unk", alphabet=ALPHABET_UNK)
    assert report.violations == {}
    assert report.kept == [0, 1]


def test_below_ratio():
    # "abc": L=3, no repeats → exact bound 3 frames; the 2× rule needs 6.
    # width 20 → 5 frames: feasible but below the ratio; width 24 → 6 frames: exactly enough
    with pytest.raises(AuditError, match="below_ratio"):
        audit(["short", "fine"], ["abc", "abc"], [20, 24])
    report = audit(["short", "fine"], ["abc", "abc"], [20, 24], policy="drop")
    assert report.violations == {"below_ratio": ["short"]}
    assert report.kept == [1]
    assert "5 frames < 2 × 3 labels" in report.details["below_ratio"][0]

    report = audit(["short", "fine"], ["abc", "abc"], [20, 24], min_frames_per_label=0)
    assert report.violations == {}
    assert report.kept == [0, 1]


def test_repeats_make_sample_infeasible_even_when_frames_cover_length():
    # "aab": L=3, 1 repeat → needs 4 frames. width 12 → 3 frames (>= L, < L + repeats)
    kwargs = {"min_frames_per_label": 0, "policy": "drop"}
    report = audit(["rep", "norep", "rep-ok"], ["aab", "abc", "aab"], [12, 12, 16], **kwargs)
    assert report.violations == {"infeasible": ["rep"]}
    assert report.kept == [1, 2]
    assert "3 frames < 4 needed" in report.details["infeasible"][0]
    with pytest.raises(AuditError, match="infeasible"):
        audit(["rep"], ["aab"], [12], min_frames_per_label=0)


def test_infeasible_takes_precedence_over_ratio():
    report = audit(["x"], ["aa"], [8], policy="drop")  # 2 frames < 3 needed
    assert report.violations == {"infeasible": ["x"]}


def test_max_label_length():
    report = audit(["long", "fits"], ["abcab", "abca"], [400, 400], max_label_length=4, policy="drop")
    assert report.violations == {"too_long": ["long"]}
    assert report.kept == [1]
    assert "5 symbols > 4" in report.details["too_long"][0]
    with pytest.raises(AuditError, match="too_long"):
        audit(["long"], ["abcab"], [400], max_label_length=4)


def test_label_length_uses_nfc():
    decomposed = Alphabet.from_texts(["\u00e9"])
    # "e" + combining accent is one symbol after NFC: L=1, needs 2 frames under the 2× rule
    report = audit(["x"], ["e\u0301"], [8], alphabet=decomposed)
    assert report.kept == [0]
    assert report.stats["label_len_max"] == 1


def test_non_finite_inputs_and_stats():
    inputs = {
        0: torch.tensor([[0.0, 0.5], [1.0, 0.25]]),
        1: torch.tensor([[0.2, float("nan")]]),
        2: torch.tensor([0.75, 0.1, 0.2]),
        3: torch.tensor([float("inf"), 0.0]),
    }
    loaded = []

    def load_input(i):
        loaded.append(i)
        return inputs[i]

    ids = ["a", "nan-sample", "c", "inf-sample", "empty"]
    texts = ["ab", "ab", "ab", "ab", ""]
    report = audit(ids, texts, [40] * 5, policy="drop", load_input=load_input)
    assert sorted(loaded) == [0, 1, 2, 3]  # dropped samples are not loaded
    assert report.violations["non_finite"] == ["nan-sample", "inf-sample"]
    assert report.kept == [0, 2]
    assert report.dropped == 3

    values = np.concatenate([inputs[0].numpy().ravel(), inputs[2].numpy().ravel()]).astype(np.float64)
    assert report.stats["input_min"] == pytest.approx(values.min())
    assert report.stats["input_max"] == pytest.approx(values.max())
    assert report.stats["input_mean"] == pytest.approx(values.mean())
    assert report.stats["input_std"] == pytest.approx(values.std())

    with pytest.raises(AuditError, match="non_finite") as e:
        audit(ids[:2], texts[:2], [40] * 2, load_input=load_input)
    assert "nan-sample" in str(e.value)


def test_dataset_non_finite_error_is_a_violation():
    def load_input(i):
        if i == 1:
            raise DataError("image x.tif (sample bad) has 3 non-finite pixel value(s) (NaN/Inf)")
        return torch.zeros(1, 2, 2)

    report = audit(["ok", "bad"], ["a", "b"], [40, 40], policy="drop", load_input=load_input)
    assert report.violations == {"non_finite": ["bad"]}
    assert report.kept == [0]
    assert "x.tif" in report.details["non_finite"][0]


def broken_second(i):
    if i == 1:
        raise DataError("audio data/b.flac is silent (all 1600 samples are 0): remove it from the manifest")
    return torch.zeros(3)


def test_unreadable_inputs_are_dropped_and_reported_under_drop():
    report = audit(["a", "b", "c"], ["a", "a", "a"], [40, 40, 40], policy="drop", load_input=broken_second)
    assert report.kept == [0, 2] and report.violations == {"unreadable": ["b"]}
    (detail,) = report.details["unreadable"]
    assert detail == "b: audio data/b.flac is silent (all 1600 samples are 0): remove it from the manifest"


def test_unreadable_inputs_are_all_listed_under_error():
    with pytest.raises(AuditError, match=r"unreadable: 1 — e\.g\. b: audio data/b\.flac is silent") as e:
        audit(["a", "b", "c"], ["a", "a", "a"], [40, 40, 40], load_input=broken_second)
    assert FIXES["unreadable"] in str(e.value)


def test_loader_bugs_are_not_taken_for_bad_data():
    def load_input(i):
        raise RuntimeError("a bug in the loader")

    with pytest.raises(RuntimeError, match="a bug in the loader"):
        audit(["x"], ["a"], [40], policy="drop", load_input=load_input)


@pytest.mark.parametrize(
    ("reason", "ids", "texts", "widths", "kwargs"),
    [
        ("empty", ["id-e7"], [""], [40], {}),
        ("unknown_symbol", ["id-u7"], ["q"], [40], {}),
        ("too_long", ["id-t7"], ["abc"], [40], {"max_label_length": 2}),
        ("infeasible", ["id-i7"], ["aab"], [12], {}),
        ("below_ratio", ["id-b7"], ["abc"], [20], {}),
        ("non_finite", ["id-n7"], ["a"], [40], {"load_input": lambda i: torch.tensor([float("nan")])}),
        ("unreadable", ["id-r7"], ["a"], [40], {"load_input": lambda i: broken_second(1)}),
    ],
)
def test_audit_error_contains_fix_hint(reason, ids, texts, widths, kwargs):
    with pytest.raises(AuditError) as e:
        audit(ids, texts, widths, **kwargs)
    msg = str(e.value)
    assert f"{reason}: 1" in msg
    assert FIXES[reason] in msg
    assert ids[0] in msg


def test_invalid_policies():
    with pytest.raises(ValueError, match="audit policy"):
        audit(["a"], ["a"], [40], policy="ignore")
    with pytest.raises(ValueError, match="unknown-symbol policy"):
        audit(["a"], ["a"], [40], unknown="skip")


def test_write_reports(tmp_path):
    report = audit(["a", "e"], ["ab", ""], [40, 40], policy="drop")
    path = write_reports([report], tmp_path)
    assert path == tmp_path / "audit.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data == [report.to_dict()]
    assert data[0]["kept"] == 1 and data[0]["dropped"] == 1


def test_unk_policy_without_unk_symbol_is_a_clear_error():
    with pytest.raises(ValueError, match=r"stability\.unknown=unk needs the symbol <unk>"):
        audit_split("train", ["a"], ["ab"], [40], Alphabet("ab"), lambda w: w // 4, unknown="unk")
