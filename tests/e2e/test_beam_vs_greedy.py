"""scripts/beam_vs_greedy.py: an LM from the train transcripts only, tuned on val, scored on val and test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recognizer.stability.audit import AuditError
from recognizer.train import train
from tests.conftest import compose_config
from tests.helpers.runs import lines_overrides, write_lines
from tests.helpers.scripts import SCRIPTS, load_script
from tests.helpers.tiny_checkpoint import tiny_checkpoint

SCRIPT = SCRIPTS / "beam_vs_greedy.py"
script = load_script("beam_vs_greedy")


def test_word_lm_and_lexicon_come_from_the_given_text_only(tmp_path: Path) -> None:
    lexicon, lm = script.language_model(["ba na", "na mo"], [" ", "a", "b", "m", "n", "o"], tmp_path, 2, "words")
    assert Path(lexicon).read_text(encoding="utf-8").splitlines() == ["ba b a", "na n a", "mo m o"]
    arpa = Path(lm).read_text(encoding="utf-8")
    assert "\tna mo" in arpa and "ngram 2=" in arpa  # a word bigram seen in the text
    assert "\tba mo" not in arpa  # and none that is not


def test_character_lm_without_lexicon_spells_spaces_as_the_decoder_token(tmp_path: Path) -> None:
    lexicon, lm = script.language_model(["ab ba"], [" ", "a", "b"], tmp_path, 3, "none")
    assert lexicon is None
    assert "\tb <space> b" in Path(lm).read_text(encoding="utf-8")  # "ab ba": b, space, b


def test_script_tunes_on_val_and_scores_val_and_test(
    tmp_path_factory: pytest.TempPathFactory, data_root: Path, tmp_path: Path
) -> None:
    ckpt = tiny_checkpoint(tmp_path_factory, data_root)
    data = [f"data.root={data_root}/digit_lines", "data.num_train=96", "data.num_val=24", "data.num_test=24"]
    cmd = [sys.executable, str(SCRIPT), str(ckpt), "--out", str(tmp_path), "--order", "2", "--lm-weights", "0.1", "0.5"]
    done = subprocess.run([*cmd, "--insertion-scores", "0", "--", *data], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "beam_vs_greedy.json").read_text())
    assert [(w, s) for w, s, _ in report["grid"]] == [(0.1, 0.0), (0.5, 0.0)]
    assert report["chosen_on_val"]["lm_weight"] in (0.1, 0.5)
    for split in ("val", "test"):
        assert set(report[split]) == {"greedy", "beam", "beam+symbols+lm2"}
        chars = {figures["chars"] for figures in report[split].values()}
        assert len(chars) == 1 and chars.pop() > 0  # every decoder scored the whole split
    assert "chosen on val" in done.stdout and "test beam+symbols+lm2" in done.stdout


def test_script_scores_the_lines_recognizer_eval_scores(tmp_path: Path) -> None:
    """A recipe that drops bad lines: the script leaves out what the checkpoint's policies leave out (a symbol
    the model does not know, a line CTC cannot align) instead of stopping on them."""
    train_set = write_lines(tmp_path / "train", {"ok": "abc", "ok2": "cab", "ok3": "ba"})
    out = tmp_path / "run"
    policies = ["stability.audit_policy=drop", "stability.unknown=drop"]
    train(compose_config("train", lines_overrides(train_set, out, *policies)))
    # t2: 21 labels in 16 frames; t3: 'd' the model never saw; t4 is alignable (9 labels), so it is scored
    test_set = write_lines(tmp_path / "test", {"t1": "abc", "t2": "abc" * 7, "t3": "abd", "t4": "abcabcabc"})
    data = ["data=lines", f"data.train={train_set}", f"data.val={train_set}", f"data.test={test_set}"]
    args = ["--out", str(tmp_path / "lm"), "--order", "2", "--lm-weights", "0.5", "--insertion-scores", "0"]
    script.main([str(out / "checkpoints" / "best.ckpt"), *args, "--", *data])  # the policies: the checkpoint's
    report = json.loads((tmp_path / "lm" / "beam_vs_greedy.json").read_text())
    assert {figures["chars"] for figures in report["test"].values()} == {3 + 9}  # t1 and t4
    assert {figures["chars"] for figures in report["val"].values()} == {3 + 3 + 2}


def test_script_refusal_names_its_own_flags_and_they_replace_the_checkpoints_policies(tmp_path: Path) -> None:
    """A checkpoint trained with audit_policy=error meets a bad test line: the refusal names the script's flags
    (not recognizer-eval's keys), and with them the script scores what recognizer-eval would with drop."""
    train_set = write_lines(tmp_path / "train", {"ok": "abc", "ok2": "cab", "ok3": "ba"})
    out = tmp_path / "run"
    train(compose_config("train", lines_overrides(train_set, out)))  # stability's defaults: error, error
    test_set = write_lines(tmp_path / "test", {"t1": "abc", "t2": "abc" * 7, "t3": "abd"})
    data = ["data=lines", f"data.train={train_set}", f"data.val={train_set}", f"data.test={test_set}"]
    args = [str(out / "checkpoints" / "best.ckpt"), "--out", str(tmp_path / "lm"), "--order", "2"]
    args += ["--lm-weights", "0.5", "--insertion-scores", "0"]
    with pytest.raises(AuditError, match=r"set --audit-policy=drop \(and --unknown=drop for symbols"):
        script.main([*args, "--", *data])
    with pytest.raises(AuditError, match=r"(?s)\(--unknown=error\):.*or set --unknown=drop"):  # t3's 'd'
        script.main([*args, "--audit-policy", "drop", "--", *data])
    # the refusal's other offer, =unk, needs <unk> in the model's alphabet: this one has none
    no_unk = r"--unknown=unk: .*best.ckpt was trained without <unk> .*; use --unknown=drop"
    with pytest.raises(ValueError, match=no_unk):
        script.main([*args, "--audit-policy", "drop", "--unknown", "unk", "--", *data])
    script.main([*args, "--audit-policy", "drop", "--unknown", "drop", "--", *data])
    report = json.loads((tmp_path / "lm" / "beam_vs_greedy.json").read_text())
    assert {figures["chars"] for figures in report["test"].values()} == {3}  # t1 only
