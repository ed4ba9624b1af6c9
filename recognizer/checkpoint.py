"""The checkpoint format: written atomically, loaded as data, models rebuilt through an allowlist.

A checkpoint is what people share, so everything read from one is treated as a stranger's data:

* the file is loaded with ``torch.load(weights_only=True)``: tensors and plain containers only, no pickled code;
* its metadata is validated as plain data of the expected types (:func:`validate`): the alphabet a list of
  strings, the character mapping a ``str → str`` dict, the config nested dicts/lists of scalars; no string
  holds an OmegaConf interpolation (``${...}``: a resolved config has none, and one would be evaluated when
  the value reaches a config);
* the model is built by :func:`build_model` from :data:`MODEL_CLASSES` (recognizer's own classes, by the
  ``_target_`` names its configs use) with plain keyword arguments checked against the class's signature.
  Nothing read from a checkpoint is ever handed to Hydra's ``instantiate``, so ``_target_``, ``_args_``
  or ``_partial_`` nested anywhere in it cannot call anything.

Every command that reads a checkpoint goes through :func:`load_checkpoint` (train's ``resume`` and
``init_from``, eval, transcribe, export, align, the Python API); a refused file raises
:class:`CheckpointError` (exit code 6) naming the file, the key and what was found.
"""

from __future__ import annotations

import inspect
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recognizer.alphabet import Alphabet
from recognizer.data.audio.features import FEATURE_KEYS, feature_settings
from recognizer.files import atomic_output
from recognizer.models import CRNN, ConformerCTC, Recognizer


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically and durably (:func:`~recognizer.files.atomic_output`, the folder
    synced too): a crash while writing leaves the previous checkpoint intact; a failed write (full disk, an
    unpicklable value) removes its temporary file and re-raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, sync_folder=True) as f:
        torch.save(state, f)
    return path


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
    validate(ckpt, path)
    return ckpt


# ---- what a checkpoint may hold ------------------------------------------------------------------------

#: The model classes a checkpoint may name, by the ``_target_`` of ``recognizer/conf/model/*.yaml`` (and the full
#: module path, which older configs and users' own configs may spell).
MODEL_CLASSES: dict[str, type[Recognizer]] = {
    "recognizer.models.CRNN": CRNN,
    "recognizer.models.crnn.CRNN": CRNN,
    "recognizer.models.ConformerCTC": ConformerCTC,
    "recognizer.models.conformer.ConformerCTC": ConformerCTC,
}
#: Data settings that define what the model sees; eval takes them from the checkpoint, not its own config.
#: Images: height, invert. Pages: how lines are cut and hyphens read. Audio: the log-mel front end
#: (height equals n_mels).
PREPROCESSING_KEYS = (
    *("height", "invert"),
    *("baseline_above", "baseline_below", "extract_height", "deskew", "hyphen"),
    *FEATURE_KEYS,
)
#: Hydra's special keys: in a checkpoint they would name code to run, so none may appear anywhere
#: (the model node's ``_target_`` excepted: it is looked up in :data:`MODEL_CLASSES`, never imported).
HYDRA_KEYS = frozenset({"_target_", "_args_", "_partial_", "_recursive_", "_convert_"})
SCALARS = (str, int, float, bool, type(None))
REFUSED = "a checkpoint is data: recognizer builds only its own model classes from plain values"


def _refuse(path: str | Path, where: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"refused checkpoint {path}: {where} {what}; {REFUSED}. Use a checkpoint written by "
        "recognizer-train, from a source you trust"
    )


def _check_plain(value: Any, where: str, path: str | Path, allow_targets: bool) -> None:
    """Raise unless ``value`` is scalars in nested dicts (string keys) and lists, with no interpolation."""
    if isinstance(value, str):
        if "${" in value:
            raise _refuse(path, where, f"holds an interpolation {value[:60]!r}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _refuse(path, where, f"has a non-string key {key!r}")
            if key in HYDRA_KEYS and not allow_targets:
                raise _refuse(path, f"{where}.{key}", f"= {str(item)[:80]!r} names code to call")
            _check_plain(item, f"{where}.{key}", path, allow_targets)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]", path, allow_targets)
    elif not isinstance(value, SCALARS):
        raise _refuse(path, where, f"holds a {type(value).__name__}, not a plain value")


def validate(ckpt: Mapping[str, Any], path: str | Path = "<checkpoint>") -> None:
    """Check a loaded checkpoint's metadata as plain data of the expected types.

    The config may carry ``_target_`` keys (it is the run's resolved config, kept for reading: eval copies
    only its preprocessing values), but the model node must pass :func:`model_spec`: an allowlisted class
    and plain arguments. The tensors (``model``, ``optimizer`` ...) are the state loaded into objects this
    program built, which ``load_state_dict`` checks.

    Raises:
        CheckpointError: what is wrong, where, and that the file was refused.
    """
    alphabet = ckpt["alphabet"]
    if not isinstance(alphabet, (list, tuple)) or not all(isinstance(s, str) and s for s in alphabet):
        raise _refuse(path, "'alphabet'", "is not a list of non-empty strings")
    _check_plain(list(alphabet), "'alphabet'", path, allow_targets=False)
    char_map = ckpt.get("char_map")
    if char_map is not None and not (
        isinstance(char_map, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in char_map.items())
    ):
        raise _refuse(path, "'char_map'", "is not a mapping of strings to strings")
    _check_plain(char_map, "'char_map'", path, allow_targets=False)
    config = ckpt["config"]
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise _refuse(path, "'config'", "is not a config with a model node")
    _check_plain(config, "config", path, allow_targets=True)
    model_spec(ckpt, path)
    data = config.get("data")
    if not isinstance(data, Mapping):
        raise _refuse(path, "config.data", "is not a mapping")
    for key in PREPROCESSING_KEYS:  # eval, transcribe and export use these values as they are
        if key in data and not isinstance(data[key], SCALARS):
            raise _refuse(path, f"config.data.{key}", f"= {str(data[key])[:80]!r} is not a scalar")


def preprocessing_settings(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The preprocessing settings of a (validated) checkpoint's data config, which eval must use.

    An audio checkpoint older than a front-end key was trained without it: that key's default; a pages
    checkpoint older than ``deskew`` cut its lines unturned.
    """
    trained = ckpt["config"]["data"]
    settings = {key: trained[key] for key in PREPROCESSING_KEYS if key in trained}
    if "extract_height" in trained:  # pages: a checkpoint older than data.deskew cut its lines unturned
        settings.setdefault("deskew", False)
    if "n_mels" in trained:  # audio
        settings |= feature_settings(trained)
    return settings


def model_spec(ckpt: Mapping[str, Any], path: str | Path = "<checkpoint>") -> tuple[type[Recognizer], dict[str, Any]]:
    """The model class and keyword arguments a checkpoint describes (``num_classes`` excluded: the alphabet's).

    Raises:
        CheckpointError: the class is not one of :data:`MODEL_CLASSES`, or an argument is unknown to it
            or not a plain value (scalars and lists of them).
    """
    node = dict(ckpt["config"]["model"])
    target = node.pop("_target_", None)
    cls = MODEL_CLASSES.get(target) if isinstance(target, str) else None
    if cls is None:
        known = ", ".join(sorted({c.__name__ for c in MODEL_CLASSES.values()}))
        raise _refuse(path, "config.model._target_", f"= {str(target)[:80]!r} is not a recognizer model ({known})")
    params = inspect.signature(cls).parameters
    for key, value in node.items():
        if key not in params or key == "num_classes":
            raise _refuse(path, f"config.model.{key}", f"is not an argument of {cls.__name__}")
        _check_plain(value, f"config.model.{key}", path, allow_targets=False)
        if isinstance(value, Mapping) or (
            isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value)
        ):
            raise _refuse(path, f"config.model.{key}", "is a mapping, not a plain value")
    return cls, node


def build_model(ckpt: Mapping[str, Any], path: str | Path = "<checkpoint>") -> tuple[Recognizer, Alphabet]:
    """The model and alphabet a checkpoint describes, with its weights loaded (no ``instantiate``).

    ``ckpt`` is validated again (:func:`validate`): the Python API also takes checkpoints as dicts.
    """
    validate(ckpt, path)
    alphabet = Alphabet(list(ckpt["alphabet"]))
    cls, kwargs = model_spec(ckpt, path)
    model = cls(num_classes=alphabet.num_classes, **kwargs)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise CheckpointError(
            f"checkpoint {path}: its weights do not fit the model its config describes ({detail})"
        ) from None
    return model, alphabet


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
    if "cuda" in state and torch.cuda.is_available():  # one state per GPU the saving process saw: as many as fit
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"][: torch.cuda.device_count()]])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x
