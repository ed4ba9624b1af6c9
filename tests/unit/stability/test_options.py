"""The ``stability`` node as typed options: the defaults are the YAML's, unknown keys are named."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from recognizer import CONFIG_DIR
from recognizer.stability.options import StabilityOptions


def test_the_defaults_are_those_of_default_yaml() -> None:
    node = OmegaConf.load(Path(CONFIG_DIR) / "stability" / "default.yaml")
    assert StabilityOptions.from_config(node) == StabilityOptions()  # every key, every value


def test_a_partial_node_keeps_the_other_defaults_and_replace_copies() -> None:
    opts = StabilityOptions.from_config({"audit_policy": "drop", "min_frames_per_label": 1.5})
    assert (opts.audit_policy, opts.min_frames_per_label, opts.unknown) == ("drop", 1.5, "error")
    assert opts.replace(unknown="unk").unknown == "unk" and opts.unknown == "error"
    assert StabilityOptions.from_config(opts) is opts


def test_an_unknown_key_is_named_unless_the_node_comes_from_a_checkpoint() -> None:
    with pytest.raises(ValueError, match=r"stability: unknown key\(s\) audit_polcy; the keys are those of"):
        StabilityOptions.from_config({"audit_polcy": "drop"})
    assert StabilityOptions.from_config({"new_key": 1, "unknown": "drop"}, strict=False).unknown == "drop"
