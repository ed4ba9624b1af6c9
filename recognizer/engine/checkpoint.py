"""Self-describing checkpoints, written atomically and loaded with ``weights_only=True``."""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically and durably: a temporary file in the same folder, synced
    to disk, renamed over ``path``, then the folder synced (so the rename itself survives a power loss).

    A crash while writing leaves the previous checkpoint intact; a failed write (full disk, an
    unpicklable value) removes its temporary file and re-raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the checkpoint
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


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


class CheckpointError(ValueError):
    """A file given as a checkpoint is not one (or not one this run can resume from); says what to give."""


class CheckpointNotFoundError(FileNotFoundError):
    """The checkpoint path names nothing, or a folder."""


#: What every checkpoint written by ``recognizer-train`` holds besides the training state.
REQUIRED_KEYS = ("model", "alphabet", "config")

NOT_A_CHECKPOINT = (
    "give a .ckpt written by recognizer-train (checkpoints/best.ckpt or last.ckpt of a run); "
    "TorchScript/ONNX exports and bare state_dicts cannot be used here"
)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint holding only tensors and plain containers (no code can run).

    Raises:
        CheckpointNotFoundError: ``path`` is missing or a folder (a ``FileNotFoundError``).
        CheckpointError: the file is not a ``recognizer-train`` checkpoint (an export, a bare
            ``state_dict``, a truncated or foreign file); the message says what to give instead.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.ckpt"))
        hint = f"it holds {', '.join(found)}" if found else "it holds no .ckpt file"
        raise CheckpointNotFoundError(f"checkpoint {path} is a folder, not a file ({hint}): give the .ckpt file itself")
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist")
    if _is_torchscript(path):
        raise CheckpointError(f"{path} is a TorchScript export, not a training checkpoint: {NOT_A_CHECKPOINT}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors carry no file name (and torch's advice to drop weights_only is unsafe)
        raise CheckpointError(f"cannot load checkpoint {path} ({_load_failure(e)}): {NOT_A_CHECKPOINT}") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        lacks = ", ".join(map(repr, missing))
        raise CheckpointError(f"{path} is not a training checkpoint (no {lacks}): {NOT_A_CHECKPOINT}")
    return ckpt


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files like ``torch.save``'s, with ``constants.pkl`` and code inside."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _load_failure(error: Exception) -> str:
    """Why ``torch.load`` failed, in a few words (torch's messages run to paragraphs)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        if detail and detail[0] and not detail[0].startswith("Unsupported operand"):  # not pickle at all
            return f"holds what a safe load refuses: {detail[0]}"
        return "not a PyTorch file"
    if isinstance(error, RuntimeError) and text:
        return f"truncated or corrupted: {text.split('. ')[0]}"
    return "not a PyTorch file"


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch (CPU and CUDA) random states, as plain tensors and lists."""
    np_state = np.random.get_state(legacy=True)  # the (name, keys, pos, has_gauss, gauss) tuple
    assert isinstance(np_state, tuple)
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`, wherever the checkpoint's tensors were mapped (the setters need CPU tensors)."""
    random.setstate(_to_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy(), *rest))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x
