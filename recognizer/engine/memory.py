"""How glibc's malloc serves a CPU training process (docs/training.md, "Memory and speed on a small machine").

Batches of variable width free and reallocate tensors of every size, and glibc's defaults handle that badly
both ways. Blocks above its mmap threshold (at most 32 MiB, and every large activation is above it) get a
mapping of their own, returned when freed, so the next one costs fresh pages that the kernel faults in and
zeroes: at 64 px a quarter of a step is system time. Below the threshold, which glibc raises after such
frees, blocks come from the heap, which keeps what is freed: the process grows to several times what it
uses. Three policies, none of which changes a number the run computes (train losses are bit-identical):

- ``system``: glibc's defaults, as above.
- ``lean``: a fixed 128 KiB threshold: every block above it is returned when freed. The smallest process,
  and the slowest (every large tensor is fresh pages).
- ``fast``: no mappings, and the heap's free top given back only past 2 GiB (``M_TRIM_THRESHOLD``, 128 KiB by
  default): every block comes from the heap and freed ones are reused, with no page faults. The heap's
  fragments of every width grow the process for as long as the machine has memory to spare; when it has
  not (:data:`LOW_MEMORY`), :class:`HeapTrim` gives the free pages back, as PyTorch's CUDA allocator
  empties its cache when memory runs out. (Blocks over 64 MiB that a thread other than the main one asks
  for still get a mapping: a thread's arena cannot hold them.)

The settings hold for the whole process and cannot be undone in it: a second policy in the same process
(a sequential sweep over ``trainer.malloc``) is refused with a warning, as are the user's own variables.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recognizer.engine.callbacks import Callback

log = logging.getLogger(__name__)

# glibc's mallopt() parameter numbers (malloc.h) and the variables it reads at a process's start
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
ENV = {
    M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_",
    M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_",
    M_MMAP_MAX: "MALLOC_MMAP_MAX_",
}
USER_ENV = sorted(name for name in ENV.values() if name in os.environ)  # set before this process started
INT_MAX = 2**31 - 1  # mallopt takes an int
LOW_MEMORY = 0.25  # fast: trim the heap when less than this fraction of the machine's memory is available
MIN_STEPS_BETWEEN_TRIMS = 10

#: ``trainer.malloc`` → the mallopt settings it makes
POLICIES: dict[str, dict[int, int]] = {
    "system": {},
    "lean": {M_MMAP_THRESHOLD: 128 * 1024},
    "fast": {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: INT_MAX},
}


_applied: list[str] = []  # the policy this process's malloc was given, once given


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl)
        return None


def set_malloc_policy(policy: str) -> bool:
    """Apply ``policy`` (a key of :data:`POLICIES`) to glibc's malloc here and in the processes started after.

    Does nothing for ``system``, where the user's environment set one of the variables it touches before
    the process started (glibc applied them; the user's values win), where another policy was applied in
    this process before (glibc's settings cannot be undone), or where the C library is not glibc.

    Returns:
        True when the policy is in force in this process.

    Raises:
        ValueError: an unknown policy.
    """
    if policy not in POLICIES:
        raise ValueError(f"trainer.malloc must be one of {', '.join(POLICIES)}, got {policy!r}")
    if _applied:
        if policy != _applied[0]:
            log.warning("trainer.malloc=%s ignored: this process runs with trainer.malloc=%s", policy, _applied[0])
        return policy == _applied[0]
    settings = POLICIES[policy]
    if not settings:
        return False
    if USER_ENV:
        log.warning("trainer.malloc=%s ignored: the environment sets %s", policy, ", ".join(USER_ENV))
        return False
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    for param, value in settings.items():
        if not libc.mallopt(param, value):  # glibc refused a value: what was set before it stays
            log.warning("trainer.malloc=%s: glibc refused %s=%d", policy, ENV[param], value)
            return False
    for param, value in settings.items():  # loader workers start from a forkserver: a fresh process reads them
        os.environ[ENV[param]] = str(value)
    _applied.append(policy)
    log.debug("malloc policy %s: %s", policy, {ENV[p]: v for p, v in settings.items()})
    return True


def malloc_trim() -> bool:
    """Give every whole free page of glibc's heaps back to the system; False where the C library is not glibc."""
    libc = _libc()
    return libc is not None and hasattr(libc, "malloc_trim") and bool(libc.malloc_trim(0))


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):  # absent, or "max" (no limit)
        return None


def _cgroup_available(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The fraction of the container's memory limit still free (cgroup v2, then v1), reclaimable page cache
    (``inactive_file``) counted as free, as the kubelet counts it; None where no limit is set."""
    for limit_file, usage_file, stat_file, inactive in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat", "total_inactive_file"),
    ):
        limit, usage = _read_int(root / limit_file), _read_int(root / usage_file)
        if limit is None or usage is None or limit >= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"):
            continue  # no limit, or one above the machine's memory
        try:
            stat = dict(line.split() for line in (root / stat_file).read_text().splitlines())
            usage -= int(stat.get(inactive, 0))
        except (OSError, ValueError):
            pass
        return max(0.0, 1 - usage / limit)
    return None


def available_memory() -> float | None:
    """The fraction of memory still available: /proc/meminfo's MemAvailable of MemTotal, or of the container's
    limit where one is set and is lower; None where neither can be read (not Linux)."""
    fractions = []
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        fractions.append(int(info["MemAvailable"].split()[0]) / int(info["MemTotal"].split()[0]))
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        pass
    container = _cgroup_available()
    if container is not None:
        fractions.append(container)
    return min(fractions, default=None)


class HeapTrim(Callback):
    """``trainer.malloc=fast``: give the heap's free pages back when the machine runs short of memory.

    Checked after every batch; trims when less than ``low`` of the memory is available, at most once every
    ``min_steps`` steps (a trim costs the pages the next steps fault back in).
    """

    def __init__(
        self,
        low: float = LOW_MEMORY,
        min_steps: int = MIN_STEPS_BETWEEN_TRIMS,
        available: Callable[[], float | None] | None = None,
    ) -> None:
        self.low, self.min_steps = low, min_steps
        self.available = available or available_memory  # the fraction of memory available (a test's stand-in)
        self.last_trim: int | None = None

    def on_batch_end(self, state: Any) -> None:
        if self.last_trim is not None and state.step - self.last_trim < self.min_steps:
            return
        fraction = self.available()
        if fraction is not None and fraction < self.low:
            self.last_trim = state.step  # even where little comes back: memory short for other reasons
            released = malloc_trim()
            log.debug("step %d: %.0f%% of memory available, heap trimmed: %s", state.step, 100 * fraction, released)
