"""Known user errors: a clean message and a documented exit code from every console script, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import InstantiationException

from recognizer.data.base import DataError
from recognizer.errors import EXIT_CODES, UserExit, classify, message_block, user_errors
from recognizer.stability.guard import NonFiniteStepError
from tests.conftest import tiny_overrides
from tests.helpers.runs import lines_overrides, write_lines

NO_TRACEBACK = "the message block only"


def raise_here(error: Exception) -> Exception:
    """``error`` with a traceback ending in this package (as when the package raised it)."""
    from recognizer.engine import precision

    try:
        precision.resolve_precision("nope", precision.torch.device("cpu"))
    except ValueError as raised:
        return error.with_traceback(raised.__traceback__)
    raise AssertionError("resolve_precision accepted 'nope'")


def test_known_errors_are_classified_by_type_or_origin() -> None:
    assert classify(NonFiniteStepError("non-finite step 3")) == "nonfinite"
    assert classify(DataError("cannot read image a.png")) == "data"
    wrapped = InstantiationException("Error in call to target 'recognizer.models.CRNN'")
    wrapped.__cause__ = raise_here(ValueError("height 30 is not divisible"))
    assert classify(wrapped) == "config"  # the constructor's own message, unwrapped
    assert classify(raise_here(ValueError("trainer.precision must be one of"))) == "config"
    assert classify(raise_here(FileNotFoundError("decoding.lm=x does not exist"))) == "data"
    try:
        int("x")  # a ValueError raised outside this package: a bug to show with its traceback
    except ValueError as foreign:
        assert classify(foreign) is None
    assert classify(raise_here(RuntimeError("anything else"))) is None


def test_the_message_block_names_the_kind_and_the_code() -> None:
    block = message_block("recognizer-train", "audit", ValueError("audit[train]: 1 sample fails\nbelow_ratio: 1"))
    assert block == (
        "recognizer-train: error: audit[train]: 1 sample fails\n  below_ratio: 1\n"
        "(audit failed, exit code 4; HYDRA_FULL_ERROR=1 shows the traceback)\n"
    )


def test_user_errors_exits_with_the_code_unless_full_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(UserExit, match=r"^prog: error: non-finite step 3$") as exit_info, user_errors("prog"):
        raise NonFiniteStepError("non-finite step 3")
    assert exit_info.value.code == EXIT_CODES["nonfinite"] == 5
    assert capsys.readouterr().err.startswith("prog: error: non-finite step 3\n(training diverged, exit code 5;")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(NonFiniteStepError), user_errors("prog"):
        raise NonFiniteStepError("non-finite step 3")


# ----------------------------------------------------------------------------- through the console scripts


def run_script(*args: str, cwd: Path, full_error: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"WANDB_MODE": "offline"}
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    command = [str(Path(sys.executable).parent / args[0]), *args[1:]]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def assert_clean(done: subprocess.CompletedProcess, code: int, prog: str, message: str) -> None:
    assert done.returncode == code, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout, NO_TRACEBACK
    assert f"{prog}: error: " in done.stderr and message in done.stderr, done.stderr[-3000:]
    assert f"exit code {code}; HYDRA_FULL_ERROR=1 shows the traceback)" in done.stderr


@pytest.mark.slow
def test_data_and_audit_errors_of_recognizer_train(tmp_path: Path) -> None:
    missing = write_lines(tmp_path / "missing", {"a": "ab", "b": "ba"})
    (tmp_path / "missing" / "b.png").unlink()
    run = tmp_path / "run1"
    done = run_script("recognizer-train", *lines_overrides(missing, run), f"hydra.run.dir={run}", cwd=tmp_path)
    assert_clean(done, 4, "recognizer-train", "missing_file: 1 — e.g. b.png: image ")
    too_long = write_lines(tmp_path / "long", {"ok": "abc", "long": "abcdabcda"})
    run = tmp_path / "run2"
    done = run_script("recognizer-train", *lines_overrides(too_long, run), f"hydra.run.dir={run}", cwd=tmp_path)
    assert_clean(done, 4, "recognizer-train", "below_ratio: 1 — e.g. long.png: width 64 → 16 frames < 2 × 9 labels")
    logged = (run / "train.log").read_text()  # the run's log says why it ended
    assert "[recognizer.errors][ERROR] - recognizer-train: error: " in logged
    assert "(audit failed, exit code 4;" in logged


@pytest.mark.slow
def test_a_diverged_run_exits_5_and_a_sweep_still_records_it(data_root: Path, tmp_path: Path) -> None:
    overrides = [*tiny_overrides(data_root, tmp_path)[:-1], "trainer.max_epochs=1", "optimizer.lr=1e6"]
    run = tmp_path / "single"
    done = run_script("recognizer-train", *overrides, f"hydra.run.dir={run}", cwd=tmp_path)
    assert_clean(done, 5, "recognizer-train", "non-finite step ")
    assert "(stability.nonfinite_policy=raise)" in done.stderr
    sweep = tmp_path / "sweep"
    done = run_script("recognizer-train", "-m", *overrides, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]  # the sweep goes on: the job returns inf
    (failure,) = sweep.rglob("failure.json")  # (the job folder's name holds data.root's slashes)
    assert json.loads(failure.read_text())["type"] == "NonFiniteStepError"


@pytest.mark.slow
def test_checkpoint_and_argument_errors_of_the_other_scripts(tmp_path: Path) -> None:
    fake = tmp_path / "model.ckpt"
    fake.write_text("not a checkpoint")
    args = ("recognizer-eval", f"checkpoint={fake}", f"hydra.run.dir={tmp_path / 'eval'}")
    done = run_script(*args, cwd=tmp_path)
    assert_clean(done, 6, "recognizer-eval", f"cannot load checkpoint {fake} (not a PyTorch file): give a .ckpt")
    debug = run_script(*args, cwd=tmp_path, full_error=True)  # the switch for the traceback
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "recognizer.checkpoint.CheckpointError: cannot load checkpoint" in debug.stderr
    done = run_script("recognizer-transcribe", str(fake), "line.png", cwd=tmp_path)
    assert_clean(done, 6, "recognizer-transcribe", "cannot load checkpoint")
    done = run_script("recognizer-score", str(tmp_path / "missing.tsv"), cwd=tmp_path)
    assert_clean(done, 3, "recognizer-score", f"{tmp_path / 'missing.tsv'} does not exist")
    done = run_script("recognizer-sweep-report", str(tmp_path / "nope"), cwd=tmp_path)
    assert_clean(done, 3, "recognizer-sweep-report", f"sweep directory {tmp_path / 'nope'} does not exist")
