"""Fine-tuning from a checkpoint (``trainer.init_from``): the alphabet policy, the weights, a frozen backbone.

As kraken's ``ketos train --load base --resize union|new --freeze-backbone``:

* ``strict`` (default): the checkpoint's alphabet, unchanged; train transcripts outside it are refused;
* ``union``: the checkpoint's symbols in their order (ids unchanged), then the train symbols it lacks;
* ``new``: the train data's own alphabet; symbols shared with the checkpoint keep their trained rows.

Output rows of symbols the checkpoint never saw keep the fresh model's initialisation (a from-scratch
row; the blank and the shared symbols carry the trained ones), and every other tensor is copied as is.
``trainer.freeze_backbone_steps`` trains only the output layer for that many steps, so the new rows
can settle before their gradients reach a backbone trained on another hand.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from recognizer.alphabet import UNK, Alphabet
from recognizer.engine.callbacks import Callback

log = logging.getLogger(__name__)

POLICIES = ("strict", "union", "new")


def init_alphabet(
    ckpt: Mapping[str, Any],
    path: str,
    texts: Sequence[str],
    configured: Alphabet | None,
    policy: str = "strict",
    with_unk: bool = False,
) -> Alphabet:
    """The alphabet of a run initialised from ``ckpt`` under ``policy`` (see the module docstring).

    Raises:
        ValueError: an unknown policy; under ``strict``, ``data.alphabet`` names another alphabet or the
            train transcripts use symbols the checkpoint lacks (the message lists them and the options).
    """
    if policy not in POLICIES:
        raise ValueError(f"trainer.init_alphabet must be one of {', '.join(POLICIES)}, got {policy!r}")
    base = Alphabet(ckpt["alphabet"])
    if policy == "new":
        return configured or Alphabet.from_texts(texts, with_unk=with_unk)
    if configured is not None and configured != base and policy == "strict":
        raise ValueError(
            f"trainer.init_from={path} was trained with alphabet {base!r} but data.alphabet gives "
            f"{configured!r}: unset data.alphabet (the checkpoint's alphabet is used), set "
            "trainer.init_alphabet=union or new, or start from another checkpoint"
        )
    wanted = configured.symbols if configured is not None else Alphabet.from_texts(texts).symbols
    missing = [s for s in dict.fromkeys(wanted) if s not in base.symbols and s != UNK]
    if missing and policy == "strict":
        raise ValueError(
            f"trainer.init_from={path}: the train transcripts use {len(missing)} symbol(s) outside its alphabet "
            f"{base!r}: {missing[:20]}. Its output layer has no class for them: set trainer.init_alphabet=union "
            "(add them) or new (the data's alphabet), start from a checkpoint whose alphabet covers the data, or "
            "train from scratch (trainer.init_from=null)"
        )
    symbols = [s for s in base.symbols if s != UNK] + missing
    if UNK in base.symbols or with_unk:
        symbols.append(UNK)  # <unk> stays last
    return Alphabet(symbols)


def init_weights(model: nn.Module, ckpt: Mapping[str, Any], alphabet: Alphabet, path: str) -> dict[str, Any]:
    """Load ``ckpt``'s weights into ``model`` (built for ``alphabet``); output rows follow the symbols.

    The output layer (``head.*``: one row per class) is copied row by row, the blank's row and each shared
    symbol's to its new id; every other tensor as it is.

    Returns:
        What was done, for the checkpoint: ``{"from", "kept", "added", "dropped"}`` (symbol lists).

    Raises:
        ValueError: any other tensor does not fit (another model size or input height).
    """
    base = Alphabet(ckpt["alphabet"])
    state = model.state_dict()
    source = ckpt["model"]
    rows = [(0, 0)] + [
        (alphabet.symbols.index(s) + 1, i + 1) for i, s in enumerate(base.symbols) if s in alphabet.symbols
    ]
    loaded: dict[str, torch.Tensor] = {}
    mismatched = []
    for name, target in state.items():
        value = source.get(name)
        if name.startswith("head.") and value is not None and value.shape[1:] == target.shape[1:]:
            merged = target.clone()  # a fresh row for every symbol the checkpoint lacks
            for new, old in rows:
                merged[new] = value[old]
            loaded[name] = merged
        elif value is not None and value.shape == target.shape:
            loaded[name] = value
        else:
            shape = tuple(value.shape) if value is not None else "missing"
            mismatched.append(f"{name}: checkpoint {shape}, model {tuple(target.shape)}")
    if mismatched:
        trained = ckpt.get("config", {}).get("data", {})
        size = next((f"data.{k}={trained[k]}" for k in ("n_mels", "height") if k in trained), None)
        raise ValueError(
            f"trainer.init_from={path}: its weights do not fit this model ({'; '.join(mismatched[:3])}). Use the "
            "checkpoint's model settings (model=... as in its config) and the same data.n_mels/height"
            + (f" (it was trained with {size})" if size else "")
        )
    model.load_state_dict(loaded)
    kept = [s for s in base.symbols if s in alphabet.symbols]
    info = {
        "from": str(path),
        "kept": kept,
        "added": [s for s in alphabet.symbols if s not in base.symbols],
        "dropped": [s for s in base.symbols if s not in alphabet.symbols],
    }
    log.info(
        "initialised the model's weights from %s: %d symbols kept, %d added %s, %d dropped (optimizer, schedule "
        "and step start fresh)",
        path,
        len(kept),
        len(info["added"]),
        info["added"][:20],
        len(info["dropped"]),
    )
    return info


class BackboneFreeze(Callback):
    """Train only the output layer (``model.head``) until step ``steps``, then everything (a loop callback).

    Frozen parameters get no gradient, so the optimizer leaves them (and their weight decay) alone.
    BatchNorm statistics still follow the new data in training mode, as in kraken's frozen backbone.
    """

    def __init__(self, model: nn.Module, steps: int) -> None:
        if steps < 0:
            raise ValueError(f"trainer.freeze_backbone_steps must be >= 0, got {steps}")
        head = {id(p) for p in model.head.parameters()}  # type: ignore[union-attr]
        self.backbone = [p for p in model.parameters() if id(p) not in head and p.requires_grad]
        self.steps = steps
        self.frozen = False

    def update(self, step: int) -> None:
        """Freeze before step ``steps`` (also after a resume), unfreeze from it on."""
        freeze = step < self.steps
        if freeze != self.frozen:
            for p in self.backbone:
                p.requires_grad_(not freeze)
            self.frozen = freeze
            log.info("step %d: backbone %s", step, f"frozen until step {self.steps}" if freeze else "unfrozen")

    def on_fit_start(self, state: Any) -> None:
        self.update(state.step)  # also after a resume inside the frozen steps

    def on_batch_end(self, state: Any) -> None:
        self.update(state.step)


def train_subset(kept: Sequence[int], samples: int | None, seed: int) -> list[int]:
    """``samples`` of the audited train indices ``kept``, drawn without replacement by ``seed`` (in their order).

    The same ``(kept, samples, seed)`` always gives the same lines, and a larger subset of the same seed
    holds every line of a smaller one (the first ``samples`` of one seeded permutation), so 100 ⊂ 300 ⊂ 1,000
    lines compare like with like. None: all of ``kept``.
    """
    if samples is None:
        return list(kept)
    if samples < 1:
        raise ValueError(f"trainer.train_samples must be >= 1 or null, got {samples}")
    if samples > len(kept):
        raise ValueError(
            f"trainer.train_samples={samples} but the train split has {len(kept)} usable samples: "
            "lower it, or set it to null to train on all of them"
        )
    order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed))[:samples]
    log.info("training on %d of the %d audited train samples (trainer.train_samples)", samples, len(kept))
    return [kept[i] for i in sorted(order.tolist())]
