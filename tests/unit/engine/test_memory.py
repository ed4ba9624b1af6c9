"""The fixed malloc mmap threshold (recognizer.engine.memory)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from recognizer.engine import memory


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The variable unset during the test and restored after it, whatever the test sets."""
    monkeypatch.setenv(memory.ENV, "0")
    monkeypatch.delenv(memory.ENV)
    return monkeypatch


def test_threshold_applies_here_and_reaches_the_processes_started_after(no_env: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    no_env.setattr(ctypes, "CDLL", lambda name: Libc())
    assert memory.fix_mmap_threshold(131072)
    assert calls == [(memory.M_MMAP_THRESHOLD, 131072)]
    child = subprocess.run(
        [sys.executable, "-c", f"import os; print(os.environ['{memory.ENV}'])"], capture_output=True, text=True
    )
    assert child.stdout.strip() == "131072"


def test_the_users_environment_and_null_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes, "CDLL", lambda name: pytest.fail("mallopt must not be called"))
    monkeypatch.setenv(memory.ENV, "65536")
    assert not memory.fix_mmap_threshold(131072)
    monkeypatch.delenv(memory.ENV)
    assert not memory.fix_mmap_threshold(None)


def test_no_glibc_is_not_an_error(no_env: pytest.MonkeyPatch) -> None:

    def missing(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    no_env.setattr(ctypes, "CDLL", missing)
    assert not memory.fix_mmap_threshold(131072)
    assert memory.ENV not in os.environ


def test_negative_threshold_is_refused_with_the_key_to_fix(no_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"trainer.malloc_mmap_threshold must be >= 0 bytes or null, got -1"):
        memory.fix_mmap_threshold(-1)
