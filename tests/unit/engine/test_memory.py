"""glibc's malloc policies (recognizer.engine.memory)."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from types import SimpleNamespace

import pytest

from recognizer.engine import memory

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """glibc's variables unset during the test and restored after it, whatever the test sets."""
    for name in memory.ENV.values():
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    return monkeypatch


def fake_libc(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []

    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    return calls


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("lean", {"MALLOC_MMAP_THRESHOLD_": "131072"}),
        ("fast", {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}),
    ],
)
def test_a_policy_applies_here_and_reaches_the_processes_started_after(
    no_env: pytest.MonkeyPatch, policy: str, expected: dict[str, str]
) -> None:
    calls = fake_libc(no_env)
    assert memory.set_malloc_policy(policy)
    assert {memory.ENV[param]: str(value) for param, value in calls} == expected
    names = sorted(memory.ENV.values())
    child = subprocess.run(
        [sys.executable, "-c", f"import os; print([os.environ.get(n) for n in {names}])"],
        capture_output=True,
        text=True,
    )
    assert child.stdout.strip() == str([expected.get(n) for n in names])


def test_system_and_the_users_environment_leave_glibc_alone(no_env: pytest.MonkeyPatch) -> None:
    calls = fake_libc(no_env)
    assert not memory.set_malloc_policy("system")
    no_env.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # the user's own setting of any of the variables wins
    assert not memory.set_malloc_policy("fast")
    assert calls == []
    assert "MALLOC_MMAP_MAX_" not in os.environ


def test_no_glibc_is_not_an_error(no_env: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    no_env.setattr(ctypes, "CDLL", missing)
    assert not memory.set_malloc_policy("fast")
    assert not any(name in os.environ for name in memory.ENV.values())


def test_an_unknown_policy_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"trainer.malloc must be one of system, lean, fast, got 'quick'"):
        memory.set_malloc_policy("quick")


MAPPED_AFTER_A_64_MIB_BLOCK = """
import ctypes, sys
from recognizer.engine.memory import set_malloc_policy
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype = Info, ctypes.c_void_p
set_malloc_policy(sys.argv[1])
block = libc.malloc(64 << 20)
print(libc.mallinfo2().hblkhd >= 64 << 20)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
@pytest.mark.parametrize(("policy", "mapped"), [("system", "True"), ("fast", "False")])
def test_fast_serves_a_large_block_from_the_heap_instead_of_a_mapping_of_its_own(policy: str, mapped: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in memory.ENV.values()}
    out = subprocess.run(
        [sys.executable, "-c", MAPPED_AFTER_A_64_MIB_BLOCK, policy], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == mapped


def test_heap_trim_gives_memory_back_only_when_it_runs_short(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    state = SimpleNamespace(step=0)
    monkeypatch.setattr(memory, "malloc_trim", lambda: trims.append(state.step) or True)
    available = {1: 0.9, 2: 0.2, 3: 0.1, 4: 0.1, 5: 0.3, 6: 0.1, 7: None}
    trim = memory.HeapTrim(low=0.25, min_steps=3, available=lambda: available[state.step])
    for state.step in range(1, 8):
        trim.on_batch_end(state)
    assert trims == [2, 6]  # short at 2, 3, 4 and 6: once, then not before 3 steps have passed


def test_available_memory_is_a_fraction_of_the_machine() -> None:
    fraction = memory.available_memory()
    assert fraction is None if sys.platform != "linux" else 0 < fraction < 1


RSS_AFTER_FREE_AND_AFTER_TRIM = """
import ctypes, sys
from recognizer.engine.memory import malloc_trim, set_malloc_policy
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes, libc.free.argtypes = [ctypes.c_size_t], [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
set_malloc_policy("fast")
blocks = [libc.malloc(1 << 20) for _ in range(128)]  # 128 MiB, touched
for b in blocks:
    libc.memset(b, 1, 1 << 20)
keep = libc.malloc(64)  # a live block above them: the heap's top cannot shrink past it
before = rss_mib()
for b in blocks:
    libc.free(b)
freed = rss_mib()
malloc_trim()
print(before - freed, before - rss_mib())
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_fast_keeps_freed_memory_until_the_trim_gives_it_back() -> None:
    env = {k: v for k, v in os.environ.items() if k not in memory.ENV.values()}
    out = subprocess.run(
        [sys.executable, "-c", RSS_AFTER_FREE_AND_AFTER_TRIM], capture_output=True, text=True, env=env, check=True
    )
    kept, returned = map(int, out.stdout.split())
    assert kept < 8 and returned > 120  # MiB: free keeps the pages resident, the trim returns them
