"""What a checkpoint saves of the run's state besides the weights, and how it comes back on another machine."""

from __future__ import annotations

import pytest
import torch

from recognizer.checkpoint import rng_state, set_rng_state


def test_random_states_of_more_gpus_than_this_machine_has_restore_those_it_has(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run on a 2-GPU node resumed on a 1-GPU node: the first GPU's state, not an IndexError."""
    restored: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(8, dtype=torch.uint8)])
    state = rng_state()
    state["cuda"] = [torch.full((8,), i, dtype=torch.uint8) for i in (1, 2)]
    set_rng_state(state)
    assert len(restored) == 1 and len(restored[0]) == 1 and restored[0][0].tolist() == [1] * 8
