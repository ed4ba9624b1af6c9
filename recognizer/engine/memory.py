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
- ``fast``: no mappings, and the heap's top given back only past 2 GiB: every block comes from the heap and
  freed ones are reused, with no page faults. The heap's fragments of every width grow the process for as long as the
  machine has memory to spare; when it has not (:data:`LOW_MEMORY`), :class:`HeapTrim` gives the free
  pages back, as PyTorch's CUDA allocator empties its cache when memory runs out.
"""

from __future__ import annotations

import ctypes
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
INT_MAX = 2**31 - 1  # mallopt takes an int
LOW_MEMORY = 0.25  # fast: trim the heap when less than this fraction of the machine's memory is available
MIN_STEPS_BETWEEN_TRIMS = 10

#: ``trainer.malloc`` → the mallopt settings it makes
POLICIES: dict[str, dict[int, int]] = {
    "system": {},
    "lean": {M_MMAP_THRESHOLD: 128 * 1024},
    "fast": {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: INT_MAX},
}


def set_malloc_policy(policy: str) -> bool:
    """Apply ``policy`` (a key of :data:`POLICIES`) to glibc's malloc here and in the processes started after.

    Does nothing for ``system``, where the user's environment already sets one of glibc's ``MALLOC_*_``
    variables this touches (glibc applied them at start; the user's values win), or where the C library
    is not glibc (macOS, musl).

    Returns:
        True when the policy was applied to this process.

    Raises:
        ValueError: an unknown policy.
    """
    if policy not in POLICIES:
        raise ValueError(f"trainer.malloc must be one of {', '.join(POLICIES)}, got {policy!r}")
    settings = POLICIES[policy]
    if not settings or any(ENV[param] in os.environ for param in ENV):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    if not all(mallopt(param, value) for param, value in settings.items()):
        return False
    for param, value in settings.items():  # loader workers start from a forkserver: a fresh process reads them
        os.environ[ENV[param]] = str(value)
    log.debug("malloc policy %s: %s", policy, {ENV[p]: v for p, v in settings.items()})
    return True


def malloc_trim() -> bool:
    """Give every whole free page of glibc's heaps back to the system; False where the C library is not glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def available_memory() -> float | None:
    """The fraction of memory still available: /proc/meminfo's MemAvailable of MemTotal, or of the cgroup's
    limit where one is set (a container); None where neither can be read (not Linux)."""
    fractions = []
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        fractions.append(int(info["MemAvailable"].split()[0]) / int(info["MemTotal"].split()[0]))
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        pass
    try:  # cgroup v2; "max" (no limit) fails int()
        limit = int(Path("/sys/fs/cgroup/memory.max").read_text())
        fractions.append(1 - int(Path("/sys/fs/cgroup/memory.current").read_text()) / limit)
    except (OSError, ValueError, ZeroDivisionError):
        pass
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
        if fraction is not None and fraction < self.low and malloc_trim():
            self.last_trim = state.step
            log.debug("step %d: %.0f%% of memory available, heap trimmed", state.step, 100 * fraction)
