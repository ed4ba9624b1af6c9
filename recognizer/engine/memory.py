"""The allocator setting that keeps a CPU training process small (docs/training.md, "Memory on a small machine").

Batches of variable width free and reallocate tensors of every size. glibc's malloc raises its mmap
threshold after such frees (the "dynamic threshold"), so later large tensors come from the heap, and the
heap keeps the freed blocks: the training process grows to several times what it uses. A fixed threshold
serves every block above it with its own mapping, returned to the system when freed.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number (malloc.h)
ENV = "MALLOC_MMAP_THRESHOLD_"  # the same setting read by glibc at a process's start


def fix_mmap_threshold(threshold: int | None) -> bool:
    """Give glibc's malloc a fixed mmap ``threshold`` (bytes) here and in the processes started after.

    Does nothing where ``threshold`` is None, where the user's environment already sets
    ``MALLOC_MMAP_THRESHOLD_`` (glibc applied it at start; the user's value wins), or where the C
    library is not glibc (macOS, musl). Numbers computed do not change, only where memory comes from.

    Returns:
        True when the threshold was applied to this process.

    Raises:
        ValueError: a negative threshold.
    """
    if threshold is None or ENV in os.environ:
        return False
    if threshold < 0:
        raise ValueError(f"trainer.malloc_mmap_threshold must be >= 0 bytes or null, got {threshold}")
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    if not mallopt(M_MMAP_THRESHOLD, threshold):
        return False
    os.environ[ENV] = str(threshold)  # loader workers start from a forkserver: a fresh process reads it
    log.debug("malloc mmap threshold fixed at %d bytes", threshold)
    return True
