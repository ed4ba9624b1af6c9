"""A checkpoint is data: nothing in one can make recognizer run code (issue 21, item 1).

Each poisoned checkpoint below holds a Hydra ``_target_`` that, if anything handed it to
``instantiate``, would create a marker file; every command that reads a checkpoint must refuse it with
exit code 6 (checkpoint error) and a message naming the key, and the marker must never appear.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from recognizer.checkpoint import CheckpointError, build_model, load_checkpoint, validate
from recognizer.inference import Transcriber
from tests.conftest import tiny_overrides
from tests.helpers.tiny_checkpoint import sample_line, tiny_checkpoint
from tests.unit.test_errors import assert_clean, run_script


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    return tiny_checkpoint(tmp_path_factory, data_root)


def call(marker: Path) -> dict[str, Any]:
    """What ``instantiate`` would turn into ``open(marker, "w")``: a file appears if it is ever called."""
    return {"_target_": "builtins.open", "file": str(marker), "mode": "w"}


def poisoned(good: Path, out: Path, where: str, marker: Path) -> Path:
    ckpt = torch.load(good, weights_only=True)
    ckpt = copy.deepcopy(ckpt)
    if where == "model_target":
        ckpt["config"]["model"] = call(marker)
    elif where == "model_nested":
        ckpt["config"]["model"]["channels"] = call(marker)
    elif where == "data_height":
        ckpt["config"]["data"]["height"] = call(marker)
    elif where == "char_map":
        ckpt["char_map"] = {"_target_": "builtins.open", "file": str(marker)}
    elif where == "alphabet_interpolation":
        ckpt["alphabet"] = [*ckpt["alphabet"][:-1], "${oc.env:HOME}"]
    elif where == "unknown_argument":
        ckpt["config"]["model"]["_args_"] = [str(marker)]
    else:
        raise AssertionError(where)
    torch.save(ckpt, out)
    return out


REFUSALS = {
    "model_target": "config.model._target_ = 'builtins.open' is not a recognizer model (CRNN, ConformerCTC)",
    "model_nested": "config.model.channels._target_ = 'builtins.open' names code to call",
    "data_height": "config.data.height = \"{'_target_': 'builtins.open', 'file': ",
    "char_map": "'char_map'._target_ = 'builtins.open' names code to call",
    "alphabet_interpolation": "'alphabet'[9] holds an interpolation '${oc.env:HOME}'",
    "unknown_argument": "config.model._args_ is not an argument of CRNN",
}


@pytest.mark.parametrize("where", list(REFUSALS))
def test_load_checkpoint_refuses_code_anywhere_in_the_metadata(good: Path, tmp_path: Path, where: str) -> None:
    marker = tmp_path / "ran"
    path = poisoned(good, tmp_path / "bad.ckpt", where, marker)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"refused checkpoint {path}: {REFUSALS[where]}")
    assert "; a checkpoint is data: recognizer builds only its own model classes from plain values" in str(info.value)
    assert not marker.exists()


def test_build_model_checks_a_dict_handed_to_the_python_api(good: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    ckpt = torch.load(poisoned(good, tmp_path / "bad.ckpt", "model_nested", marker), weights_only=True)
    with pytest.raises(CheckpointError, match=r"config\.model\.channels\._target_ = 'builtins\.open' names code"):
        Transcriber(ckpt)  # the Python API takes loaded dicts, not only paths
    with pytest.raises(CheckpointError, match=r"names code to call"):
        build_model(ckpt)
    assert not marker.exists()


def test_a_good_checkpoint_still_loads_and_builds(good: Path) -> None:
    ckpt = load_checkpoint(good)
    validate(ckpt)
    model, alphabet = build_model(ckpt)
    assert type(model).__name__ == "CRNN" and model.num_classes == alphabet.num_classes == len(ckpt["alphabet"]) + 1


def test_weights_that_do_not_fit_the_described_model_are_a_checkpoint_error(good: Path, tmp_path: Path) -> None:
    ckpt = torch.load(good, weights_only=True)
    ckpt["config"]["model"]["rnn_hidden"] = 7
    with pytest.raises(CheckpointError, match=r"its weights do not fit the model its config describes \("):
        build_model(ckpt, "x.ckpt")


@pytest.mark.slow
def test_every_command_refuses_a_poisoned_checkpoint(good: Path, data_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bad = poisoned(good, tmp_path / "bad.ckpt", "model_nested", marker)
    refusal = f"refused checkpoint {bad}: config.model.channels._target_ = 'builtins.open' names code to call"
    image, _ = sample_line(data_root)
    commands = {
        "recognizer-transcribe": [str(bad), str(image)],
        "recognizer-export": [str(bad), "--out", str(tmp_path / "export")],
        "recognizer-align": [str(bad), str(image), "--out", str(tmp_path / "a.png")],
        "recognizer-eval": [
            f"checkpoint={bad}",
            f"data.root={data_root}/digit_lines",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
    }
    for where, option in (("resume", "trainer.resume"), ("init", "trainer.init_from")):
        run = tmp_path / where
        commands[f"recognizer-train {where}"] = [
            *tiny_overrides(data_root, run)[:-1],
            f"{option}={bad}",
            f"hydra.run.dir={run}",
        ]
    for name, args in commands.items():
        done = run_script(name.split()[0], *args, cwd=tmp_path)
        assert_clean(done, 6, name.split()[0], refusal)
        assert not marker.exists(), name
