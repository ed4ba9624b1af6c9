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
  fragments of every width grow the process while the machine has memory to spare; :class:`HeapTrim` gives
  the free pages back before it runs out, as PyTorch's CUDA allocator empties its cache when memory runs
  out, and where the heap grows faster than a trim can keep up with, gives large blocks mappings again.
  (Blocks over 64 MiB that a thread other than the main one asks for still get a mapping: a thread's arena
  cannot hold them.)

The settings hold for the whole process, and glibc has no way back to its defaults: a second policy in the same process
(a sequential sweep over ``trainer.malloc``) is refused with a warning, as are the user's own variables.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Callable, Mapping
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
GROWTH_MARGIN = 2.0  # fast: keep this many times the largest growth of one batch available
DEFAULT_MMAP_MAX = 65536  # glibc's

#: ``trainer.malloc`` → the mallopt settings it makes
POLICIES: dict[str, dict[int, int]] = {
    "system": {},
    "lean": {M_MMAP_THRESHOLD: 128 * 1024},
    "fast": {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: INT_MAX},
}
#: ``fast``'s way out (:func:`give_back_mappings`): blocks over 32 MiB get a mapping of their own again, returned
#: when freed, and the heap's top goes back past 64 MiB, as ``system`` settles once glibc's threshold has risen
MAPPINGS: dict[int, int] = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20, M_MMAP_MAX: DEFAULT_MMAP_MAX}


_applied: list[str] = []  # the policy this process's malloc was given, once given


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl)
        return None


def _mallopt(settings: dict[int, int], purpose: str) -> bool:
    """Give glibc's malloc ``settings`` in order, for ``purpose`` (named in the warning where glibc refuses one).

    Returns:
        False where the C library is not glibc, or at the first value glibc refuses (what was set before it
        stays); True when all hold.
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    for param, value in settings.items():
        if not libc.mallopt(param, value):
            log.warning("%s: glibc refused %s=%d", purpose, ENV[param], value)
            return False
    return True


def set_malloc_policy(policy: str) -> bool:
    """Apply ``policy`` (a key of :data:`POLICIES`) to glibc's malloc here and in the processes started after.

    Does nothing for ``system``, where the user's environment set one of the variables it touches before
    the process started (glibc applied them; the user's values win), where another policy was applied in
    this process before (glibc has no way back to its defaults), or where the C library is not glibc.

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
    if not _mallopt(settings, f"trainer.malloc={policy}"):
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


def _cgroup_available(root: Path = Path("/sys/fs/cgroup")) -> tuple[int, int] | None:
    """Bytes still free under the container's memory limit (cgroup v2, then v1), reclaimable page cache
    (``inactive_file``) counted as free, as the kubelet counts it, and the limit; None where no limit is set."""
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
        return max(0, limit - usage), limit
    return None


def available_memory() -> tuple[int, int] | None:
    """Bytes still available and the total they are part of: /proc/meminfo's MemAvailable and MemTotal, or
    the container's free bytes and limit where one is set and leaves less; None where neither can be read
    (not Linux)."""
    found = []
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        found.append((int(info["MemAvailable"].split()[0]) * 1024, int(info["MemTotal"].split()[0]) * 1024))
    except (OSError, KeyError, ValueError):
        pass
    container = _cgroup_available()
    if container is not None:
        found.append(container)
    return min(found, default=None)


def resident_memory() -> int | None:
    """This process's resident set in bytes (/proc/self/statm); None where it cannot be read (not Linux)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None


def give_back_mappings() -> bool:
    """Serve large blocks with mappings again (:data:`MAPPINGS`): ``fast``'s way out where its heap grows faster
    than the machine can hold. False where not glibc or where glibc refuses a value."""
    return _mallopt(MAPPINGS, "trainer.malloc=fast, large blocks mapped again")


class HeapTrim(Callback):
    """``trainer.malloc=fast``: give the heap's free pages back before the machine runs out of memory.

    Under ``fast`` a freed block stays in the process, so a step that cannot reuse the heap's free blocks
    (a wider batch than before) takes fresh memory: a step of a large model on wide lines takes gigabytes (a
    96 px model grew by ~2 GB a step and was killed for memory when checked every 10 steps with a fixed
    margin). So after every batch the callback notes how much this process grew over the batch, and trims
    when the memory available is less than ``low`` of the total or less than ``margin`` times the largest
    growth of one batch seen so far. Where a trim leaves too little all the same:

    - if even one batch's growth no longer fits, the heap cannot be kept: large blocks get mappings again
      (:func:`give_back_mappings`; slower, bounded), with a warning;
    - otherwise another process holds the memory: the next trim waits ``min_steps`` steps, since every trim
      costs the pages the next steps fault back in.
    """

    def __init__(
        self,
        low: float = LOW_MEMORY,
        margin: float = GROWTH_MARGIN,
        min_steps: int = MIN_STEPS_BETWEEN_TRIMS,
        available: Callable[[], tuple[int, int] | None] | None = None,
        resident: Callable[[], int | None] | None = None,
    ) -> None:
        self.low, self.margin, self.min_steps = low, margin, min_steps
        self.available = available or available_memory  # (bytes available, total bytes); a test's stand-in
        self.resident = resident or resident_memory  # this process's resident bytes; a test's stand-in
        self.last_resident: int | None = None
        self.growth = 0  # the largest growth of the resident set over one batch
        self.wait_until = 0  # the first step to trim again
        self.mapped: bool | None = None  # large blocks were given mappings again (None: not tried)

    def on_batch_end(self, state: Any) -> None:
        resident = self.resident()
        if resident is not None and self.last_resident is not None:
            self.growth = max(self.growth, resident - self.last_resident)
        self.last_resident = resident
        if state.step < self.wait_until:
            return
        memory = self.available()
        if memory is None or memory[0] >= self.needed(memory[1]):
            return
        released = malloc_trim()
        self.last_resident = self.resident()  # what the trim gave back is not growth of the next batch
        after = self.available()
        log.debug(
            "step %d: %.1f GB available, heap trimmed (%s): %s",
            state.step,
            memory[0] / 1e9,
            released,
            "n/a" if after is None else f"{after[0] / 1e9:.1f} GB after",
        )
        if after is None or after[0] >= self.needed(after[1]):
            return
        if after[0] < self.margin * self.growth and self.mapped is None:  # tried once: one warning
            self.mapped = give_back_mappings()
            growth, self.growth = self.growth, 0  # batches grow by what the heap still serves from now on
            log.warning(
                "trainer.malloc=fast: one batch grew this process by up to %.1f GB and %.1f GB is available after a "
                "trim: large blocks get mappings again (%s), as with trainer.malloc=system; slower, but bounded",
                growth / 1e9,
                after[0] / 1e9,
                "done" if self.mapped else "not possible here",
            )
        else:
            self.wait_until = state.step + self.min_steps

    def on_validation_end(self, state: Any, metrics: Mapping[str, float], improved: bool) -> None:
        """What validation (and the checkpoint after it) took is not a batch's growth: measure afresh."""
        self.last_resident = None

    def needed(self, total: int) -> float:
        """The bytes that must stay available: ``low`` of ``total``, or ``margin`` batches' growth if more."""
        return max(self.low * total, self.margin * self.growth)
