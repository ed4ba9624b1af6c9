"""glibc's malloc policies (recognizer.engine.memory)."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from recognizer.engine import memory

LIBC, LIBC_VERSION = platform.libc_ver()
GLIBC = LIBC == "glibc"
MALLINFO2 = GLIBC and tuple(map(int, LIBC_VERSION.split(".")[:2])) >= (2, 33)
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in memory.ENV.values()}


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """A process whose malloc has no policy yet and whose user set no variable, with a stand-in libc
    recording the mallopt calls; glibc's variables restored after the test, whatever it sets."""
    for name in memory.ENV.values():
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    monkeypatch.setattr(memory, "USER_ENV", [])
    monkeypatch.setattr(memory, "_applied", [])
    calls: list[tuple[int, int]] = []

    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(memory, "_libc", Libc)
    return calls


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("lean", {"MALLOC_MMAP_THRESHOLD_": "131072"}),
        ("fast", {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}),
    ],
)
def test_a_policy_applies_here_and_reaches_the_processes_started_after(
    fresh: list[tuple[int, int]], policy: str, expected: dict[str, str]
) -> None:
    assert memory.set_malloc_policy(policy)
    assert {memory.ENV[param]: str(value) for param, value in fresh} == expected
    names = sorted(memory.ENV.values())
    child = subprocess.run(
        [sys.executable, "-c", f"import os; print([os.environ.get(n) for n in {names}])"],
        capture_output=True,
        text=True,
    )
    assert child.stdout.strip() == str([expected.get(n) for n in names])


def test_system_and_the_users_variables_leave_glibc_alone(
    fresh: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert not memory.set_malloc_policy("system")
    monkeypatch.setattr(memory, "USER_ENV", ["MALLOC_MMAP_THRESHOLD_"])  # set before the process started
    with caplog.at_level(logging.WARNING, logger="recognizer.engine.memory"):
        assert not memory.set_malloc_policy("fast")
    assert "trainer.malloc=fast ignored: the environment sets MALLOC_MMAP_THRESHOLD_" in caplog.text
    assert fresh == [] and "MALLOC_MMAP_MAX_" not in os.environ


def test_a_second_policy_in_one_process_is_refused_with_a_warning(
    fresh: list[tuple[int, int]], caplog: pytest.LogCaptureFixture
) -> None:
    assert memory.set_malloc_policy("fast")
    with caplog.at_level(logging.WARNING, logger="recognizer.engine.memory"):
        assert not memory.set_malloc_policy("lean")  # a sequential sweep: glibc has no way back to its defaults
        assert memory.set_malloc_policy("fast")  # the same one again is in force
    assert caplog.text.count("trainer.malloc=lean ignored: this process runs with trainer.malloc=fast") == 1
    assert len(fresh) == 2  # fast's two settings, made once


def test_no_glibc_is_not_an_error(fresh: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_libc", lambda: None)
    assert not memory.set_malloc_policy("fast")
    assert not memory.malloc_trim()
    assert not memory.give_back_mappings()
    assert not any(name in os.environ for name in memory.ENV.values())


def test_large_blocks_get_mappings_again_with_systems_steady_state(fresh: list[tuple[int, int]]) -> None:
    assert memory.give_back_mappings()
    assert {memory.ENV[param]: value for param, value in fresh} == {
        "MALLOC_MMAP_THRESHOLD_": 32 * 2**20,
        "MALLOC_TRIM_THRESHOLD_": 64 * 2**20,
        "MALLOC_MMAP_MAX_": 65536,
    }


def test_a_value_glibc_refuses_stops_the_settings_with_a_warning_that_names_it(
    fresh: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    class Libc:  # an older glibc that does not know M_MMAP_MAX=0
        def mallopt(self, param: int, value: int) -> int:
            calls.append(param)
            return int(param != memory.M_MMAP_MAX)

    monkeypatch.setattr(memory, "_libc", Libc)
    with caplog.at_level(logging.WARNING, logger="recognizer.engine.memory"):
        assert not memory.set_malloc_policy("fast")
        assert not memory.give_back_mappings()
    assert "trainer.malloc=fast: glibc refused MALLOC_MMAP_MAX_=0" in caplog.text
    assert "trainer.malloc=fast, large blocks mapped again: glibc refused MALLOC_MMAP_MAX_=65536" in caplog.text
    assert calls == [memory.M_MMAP_MAX, memory.M_MMAP_THRESHOLD, memory.M_TRIM_THRESHOLD, memory.M_MMAP_MAX]
    assert memory._applied == []  # not in force: a later run in this process may try again
    assert "MALLOC_MMAP_MAX_" not in os.environ


def test_an_unknown_policy_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"trainer.malloc must be one of system, lean, fast, got 'quick'"):
        memory.set_malloc_policy("quick")


GB = 10**9  # the messages speak in GB


class Machine:
    """A stand-in machine of ``total`` GB: what other processes hold, and this process's heap, of which
    ``free`` GB are pages freed but kept (what a trim gives back)."""

    def __init__(self, total: float, monkeypatch: pytest.MonkeyPatch) -> None:
        self.total, self.others, self.live, self.free = total, 0.0, 1.0, 0.0
        self.trims: list[int] = []
        self.mappings: list[int] = []
        self.step = 0
        monkeypatch.setattr(memory, "malloc_trim", self.trim)
        monkeypatch.setattr(memory, "give_back_mappings", lambda: self.mappings.append(self.step) or True)

    def trim(self) -> bool:
        self.trims.append(self.step)
        self.free = 0.0
        return False  # glibc's return says nothing about what came back: not relied on

    def available(self) -> tuple[int, int]:
        return int((self.total - self.others - self.live - self.free) * GB), int(self.total * GB)

    def resident(self) -> int:
        return int((self.live + self.free) * GB)

    def run(self, trim: memory.HeapTrim, batches: dict[int, tuple[float, float]]) -> None:
        """Each batch: others now hold ``others`` GB, and this batch left ``grown`` GB more freed heap."""
        for self.step, (self.others, grown) in sorted(batches.items()):
            self.free += grown
            trim.on_batch_end(SimpleNamespace(step=self.step))


def test_heap_trim_gives_memory_back_when_less_than_a_quarter_is_available(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = Machine(total=16, monkeypatch=monkeypatch)
    trim = memory.HeapTrim(low=0.25, margin=2, min_steps=3, available=machine.available, resident=machine.resident)
    machine.run(
        trim,
        {
            1: (2, 0.5),  # 12.5 of 16 GB available: nothing to do
            2: (11, 1.0),  # 2.5 GB available, under a quarter: a trim, which gives 4 GB back
            3: (11, 0.5),  # short again: trimmed at once (not 10 steps later: a few batches can take gigabytes)
            4: (11, 0.0),  # 4 GB: enough
            5: (13, 0.0),  # others hold 13 GB: a trim, which cannot help (2 GB after) ...
            6: (13, 0.0),  # ... so the next waits 3 steps, as each trim costs the pages the next batches fault in
            7: (13, 0.0),
            8: (13, 0.0),
            9: (2, 0.0),
        },
    )
    assert machine.trims == [2, 3, 5, 8]
    assert trim.growth == 1 * GB and machine.mappings == []


def test_heap_trim_keeps_two_batches_of_growth_available_else_gives_large_blocks_mappings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    machine = Machine(total=16, monkeypatch=monkeypatch)
    trim = memory.HeapTrim(low=0.25, margin=2, min_steps=3, available=machine.available, resident=machine.resident)
    with caplog.at_level(logging.WARNING):
        machine.run(
            trim,
            {
                1: (2, 0.5),
                2: (2, 4.0),  # a batch that took 4 GB of fresh heap: 8.5 GB available, two such batches fit
                3: (4, 0.5),  # 6 GB available, above a quarter but not two 4 GB batches: a trim
                4: (10, 0.5),  # 4.5 GB; after the trim 5 GB, less than two batches: mappings again, once
                5: (10, 0.5),  # growth counts from the mappings on (0.5 GB): 4.5 GB available is enough
            },
        )
    assert machine.trims == [3, 4]
    assert machine.mappings == [4]
    assert "one batch grew this process by up to 4.0 GB and 5.0 GB is available after a trim" in caplog.text
    assert trim.growth == 0.5 * GB


def test_what_validation_takes_is_not_a_batchs_growth(monkeypatch: pytest.MonkeyPatch) -> None:
    """A validation between two batches took 10 GB (every val line, the checkpoint): measured as one batch's
    growth it would demand 20 GB available and give large blocks mappings for the rest of the run."""
    machine = Machine(total=24, monkeypatch=monkeypatch)
    trim = memory.HeapTrim(low=0.25, margin=2, min_steps=3, available=machine.available, resident=machine.resident)
    machine.run(trim, {1: (2, 0.5), 2: (2, 1.0)})
    machine.free += 10.0  # the epoch's validation
    trim.on_validation_end(SimpleNamespace(step=2), {"val/cer": 0.2}, improved=True)
    machine.run(trim, {3: (2, 0.5), 4: (2, 0.5)})
    assert trim.growth == 1 * GB and machine.mappings == []


def test_memory_readings_are_bytes_of_this_machine_and_process() -> None:
    available, resident = memory.available_memory(), memory.resident_memory()
    if sys.platform != "linux":
        assert available is None and resident is None
    else:
        assert available is not None and 0 < available[0] < available[1]
        assert resident is not None and 0 < resident < available[1]


def test_a_container_limit_counts_reclaimable_cache_as_free(tmp_path: Path) -> None:
    mib = 1 << 20
    (tmp_path / "memory.max").write_text("max\n")  # cgroup v2 without a limit
    assert memory._cgroup_available(tmp_path) is None
    (tmp_path / "memory.max").write_text(f"{1024 * mib}\n")
    (tmp_path / "memory.current").write_text(f"{900 * mib}\n")
    (tmp_path / "memory.stat").write_text(f"anon {500 * mib}\ninactive_file {400 * mib}\n")
    assert memory._cgroup_available(tmp_path) == (524 * mib, 1024 * mib)
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{1024 * mib}\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text(f"{1000 * mib}\n")
    (v1 / "memory" / "memory.stat").write_text(f"total_inactive_file {24 * mib}\n")
    assert memory._cgroup_available(v1) == (48 * mib, 1024 * mib)


MAPPED_AFTER_A_64_MIB_BLOCK = """
import ctypes, sys
from recognizer.engine.memory import set_malloc_policy
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype = Info, ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
set_malloc_policy(sys.argv[1])
block = libc.malloc(64 << 20)
print(libc.mallinfo2().hblkhd >= 64 << 20)
"""


@pytest.mark.skipif(not MALLINFO2, reason="glibc 2.33 or later (mallinfo2)")
@pytest.mark.parametrize(("policy", "mapped"), [("system", "True"), ("fast", "False")])
def test_fast_serves_a_large_block_from_the_heap_instead_of_a_mapping_of_its_own(policy: str, mapped: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", MAPPED_AFTER_A_64_MIB_BLOCK, policy],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
        check=True,
    )
    assert out.stdout.strip() == mapped


RSS_AFTER_FREE_AND_AFTER_TRIM = """
import ctypes, os
from recognizer.engine.memory import malloc_trim, set_malloc_policy
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes, libc.free.argtypes = [ctypes.c_size_t], [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
set_malloc_policy("fast")
blocks = [libc.malloc(1 << 20) for _ in range(128)]  # 128 MiB, touched
for b in blocks:
    libc.memset(b, 1, 1 << 20)
before = rss_mib()
for b in blocks:
    libc.free(b)
freed = rss_mib()
malloc_trim()
print(before - freed, before - rss_mib())
"""


@pytest.mark.skipif(not GLIBC or sys.platform != "linux", reason="glibc's malloc and /proc only")
def test_fast_keeps_freed_memory_until_the_trim_gives_it_back() -> None:
    out = subprocess.run(
        [sys.executable, "-c", RSS_AFTER_FREE_AND_AFTER_TRIM], capture_output=True, text=True, env=CLEAN_ENV, check=True
    )
    kept, returned = map(int, out.stdout.split())
    # glibc's defaults would map each 1 MiB block and unmap it when freed; fast keeps the 128 MiB (below its
    # 2 GiB trim threshold) resident, and the trim returns it
    assert kept < 8 and returned > 120
