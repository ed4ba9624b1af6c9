"""Writing a file so that no crash, full disk or planted link leaves a half-written or redirected one.

Every file recognizer replaces in place (checkpoints, the line cache, transcribed pages, manifests,
``metrics.jsonl`` cut back on resume) goes through :func:`atomic_output`: a temporary file with an
unpredictable name, created exclusively beside the target (a link planted under that name is never
written through), synced to disk, then renamed over the target. A failure leaves the old file (or
none) and no temporary file; a symlink at the target is replaced, not followed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_output", "fsync_dir", "write_atomic"]


@contextlib.contextmanager
def atomic_output(path: Path, sync_folder: bool = False) -> Iterator[BinaryIO]:
    """A binary file to write; on a clean exit it becomes ``path`` (see the module docstring).

    Args:
        path: the file to write; its folder must exist.
        sync_folder: also sync the folder after the rename, so the rename itself survives a power loss
            (a caller writing many files into one folder syncs it once instead, :func:`fsync_dir`).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)  # O_BINARY: Windows keeps b"\n"
    fd = os.open(tmp, flags, 0o666)  # 0o666 & ~umask, as open() gives
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes, sync_folder: bool = False) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_output`."""
    with atomic_output(path, sync_folder) as f:
        f.write(data)


def fsync_dir(folder: Path) -> None:
    """Sync a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
