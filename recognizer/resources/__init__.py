"""Data files that ship with the package (lexicons), read with :func:`resource_path`, not through ``conf/``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def resource_path(name: str) -> Path | None:
    """The shipped file ``name`` of this folder, or None if the package has no such file.

    Read through :mod:`importlib.resources`, so it works from a wheel as from a checkout.
    """
    if not name or Path(name).name != name:  # a bare file name: never a path that climbs out of the folder
        return None
    found = resources.files(__name__) / name
    return Path(str(found)) if found.is_file() else None
