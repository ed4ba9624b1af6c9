"""Localisation of a non-finite step: save the batch and state, replay it with hooks, name the layer.

Nothing here runs on a healthy step. When the guard sees a non-finite loss or gradient, the
:class:`NonFiniteInspector` writes ``nonfinite/step_N.pt`` (the batch and the model, optimizer and
scaler state that produced it) and replays the batch on a copy of the model:

* forward hooks on every module record, in execution order, the first module whose output holds
  NaN/Inf and whether its inputs were already non-finite;
* when the forward is finite, tensor hooks on each module's inputs and outputs record the first
  module (in backward order) whose input gradient went non-finite while its output gradient was
  finite.

The result names the module, its type and the likely cause (non-finite input data, fp16
overflow, exploded weights, an operation such as ``sqrt``/``log`` of an invalid value, or the CTC
loss itself). The replay runs in training mode (BatchNorm batch statistics as in the step) with
a fresh dropout draw, so a NaN that depends on one dropout mask may not reproduce; the saved file
allows a manual replay under ``torch.autograd.detect_anomaly``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from recognizer.checkpoint import save_checkpoint
from recognizer.data.batching import Batch

log = logging.getLogger(__name__)

#: Largest finite float16 value; activations beyond it overflow under fp16 autocast.
FP16_MAX = 65504.0
#: A weight magnitude beyond this is taken as the mark of a diverged optimisation.
EXPLODED_WEIGHT = 1e4
#: The advice for a diverged optimisation.
LR_FIX = (
    "the learning rate is too high for the gradient scale — lower optimizer.lr, keep trainer.grad_clip > 0, "
    "or use stability.nonfinite_policy=rollback"
)


@dataclass
class Localization:
    """Where a replayed batch first went non-finite.

    Attributes:
        stage: ``"input"`` (the batch itself), ``"forward"``, ``"loss"``, ``"backward"`` or
            ``"not_reproduced"``.
        module: dotted module name (``""`` is the model itself), or None.
        module_type: the module's class name, or None.
        inputs_finite: whether that module's inputs (forward) or output gradients (backward) were finite.
        cause: the likely cause, in words, with the fix.
        samples: ids of the samples at fault, when they can be told apart.
        bad_parameters: parameters whose gradient is non-finite after the replayed backward.
    """

    stage: str
    module: str | None
    module_type: str | None
    inputs_finite: bool
    cause: str
    samples: list[str] = field(default_factory=list)
    bad_parameters: list[str] = field(default_factory=list)

    def summary(self) -> str:
        where = f"module '{self.module or '<model>'}' ({self.module_type})" if self.module_type else self.stage
        inputs = "inputs finite" if self.inputs_finite else "inputs already non-finite"
        text = f"localised by replay: {self.stage} — {where}, {inputs}; likely cause: {self.cause}"
        if self.samples:
            text += f"; samples {self.samples[:10]}"
        if self.bad_parameters:
            text += f"; non-finite gradients in {self.bad_parameters[:5]}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _tensors(x: Any) -> Iterator[Tensor]:
    """Every floating-point tensor inside nested tuples/lists/dicts."""
    if isinstance(x, Tensor):
        if x.is_floating_point():
            yield x
    elif isinstance(x, (tuple, list)):
        for v in x:
            yield from _tensors(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)


def _finite(x: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _tensors(x))


def _abs_max(x: Any) -> float:
    values = [float(t.detach().abs().max()) for t in _tensors(x) if t.numel()]
    return max(values, default=0.0)


def _forward_cause(module: nn.Module, inputs: Any, output: Any) -> str:
    """Why a module with finite inputs produced a non-finite output."""
    dtypes = {t.dtype for t in _tensors(output)}
    weights = [p for p in module.parameters(recurse=True)]
    w_max = max((float(p.detach().abs().max()) for p in weights if p.numel()), default=0.0)
    if not all(bool(torch.isfinite(p).all()) for p in weights):
        return "its weights are already non-finite: restore a checkpoint and lower optimizer.lr"
    if torch.float16 in dtypes and any(bool(torch.isinf(t).any()) for t in _tensors(output)):
        return (
            f"fp16 overflow (output in float16 exceeds ±{FP16_MAX:g}; inputs up to {_abs_max(inputs):.3g}): "
            "use trainer.precision=bf16-mixed or 32, or normalise/scale down this layer's inputs"
        )
    if w_max > EXPLODED_WEIGHT:
        return f"its weights exploded (|w| up to {w_max:.3g}): {LR_FIX}"
    if _abs_max(inputs) > 1e15:
        return "its inputs are huge (overflow in the next operation): normalise the inputs or lower optimizer.lr"
    return (
        "this module's own forward computes NaN/Inf from finite inputs — look for sqrt/log/pow/division "
        "of a negative or zero value and add a clamp or an epsilon"
    )


class _ForwardProbe:
    """Forward hooks that remember the first module whose output is non-finite."""

    def __init__(self, model: nn.Module) -> None:
        self.first: tuple[str, nn.Module, bool, str] | None = None
        self.order: list[tuple[str, Any, Any]] = []
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in model.named_modules()]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            self.order.append((name, inputs, output))
            if self.first is None and not _finite(output):
                inputs_ok = _finite(inputs)
                cause = _forward_cause(module, inputs, output) if inputs_ok else ""
                self.first = (name, module, inputs_ok, cause)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _no_inplace(model: nn.Module) -> None:
    """In-place activations would invalidate the tensor hooks of the replay; turn them off."""
    for m in model.modules():
        if hasattr(m, "inplace"):
            setattr(m, "inplace", False)  # noqa: B010 (any module type)


class _BackwardProbe:
    """Tensor hooks on every module's inputs and outputs, recording gradient finiteness."""

    def __init__(self, order: list[tuple[str, Any, Any]]) -> None:
        self.out_ok: dict[str, bool] = {}
        self.in_bad_order: list[str] = []
        for name, inputs, output in order:
            for t in _tensors(output):
                if t.requires_grad:
                    t.register_hook(self._record(name, "out"))
            for t in _tensors(inputs):
                if t.requires_grad:
                    t.register_hook(self._record(name, "in"))

    def _record(self, name: str, kind: str):
        def hook(grad: Tensor) -> None:
            ok = bool(torch.isfinite(grad).all())
            if kind == "out":
                self.out_ok[name] = self.out_ok.get(name, True) and ok
            elif not ok and name not in self.in_bad_order:
                self.in_bad_order.append(name)

        return hook

    def culprit(self) -> str | None:
        """The first module (backward order) whose input gradient is bad while its output gradient is finite."""
        for name in self.in_bad_order:
            if self.out_ok.get(name, True):
                return name
        return None


def _bad_input_samples(batch: Batch) -> list[str]:
    flat = batch.inputs.detach().flatten(1)
    bad = (~torch.isfinite(flat)).any(1).nonzero().flatten().tolist()
    return [batch.ids[i] for i in bad]


def localize(model: nn.Module, batch: Batch, ctc: nn.Module, autocast: Any = None) -> Localization:
    """Replay ``batch`` on a copy of ``model`` and name where it first goes non-finite.

    Args:
        model: the model as it was when the step failed (left untouched: a copy is replayed).
        batch: the offending batch (any device; moved to the model's device).
        ctc: the loss module, called as ``ctc(logits, output_lengths, targets, target_lengths)``.
        autocast: a context-manager factory (``Precision.autocast``) to replay under the same
            precision, or None for fp32.

    Returns:
        The :class:`Localization`.
    """
    found = _input_fault(batch)
    if found is not None:
        return found
    device = next(model.parameters()).device
    replica = copy.deepcopy(model)
    _no_inplace(replica)
    replica.train()
    replica.zero_grad(set_to_none=True)
    batch = batch.to(device)
    probe = _ForwardProbe(replica)
    try:
        with autocast() if autocast is not None else torch.autocast(device.type, enabled=False):
            logits, lengths = replica(batch.inputs, batch.input_lengths)
    finally:
        probe.remove()
    if probe.first is not None:
        return _forward_fault(*probe.first)
    backward = _BackwardProbe(probe.order)
    out = ctc(logits, lengths, batch.targets, batch.target_lengths)
    if not math.isfinite(float(out.loss.detach())):
        per_sample = out.per_sample.detach().cpu().tolist()
        bad = [batch.ids[i] for i, v in enumerate(per_sample) if not math.isfinite(v)]
        return Localization(
            "loss",
            None,
            None,
            True,
            "the CTC loss is infinite for finite logits: a sample is infeasible (fewer frames than label "
            "length + repeats) and stability.zero_infinity=false — shorten the labels or widen the inputs",
            samples=bad,
        )
    out.loss.backward()
    return _backward_fault(replica, backward)


def _input_fault(batch: Batch) -> Localization | None:
    """Non-finite input data: named by sample, before anything is replayed."""
    bad_inputs = _bad_input_samples(batch)
    if not bad_inputs:
        return None
    kinds = "NaN" if bool(torch.isnan(batch.inputs).any()) else "Inf"
    return Localization(
        "input",
        None,
        None,
        False,
        f"non-finite input data ({kinds}) in the batch: fix or remove these files, "
        "keep stability.scan_inputs=true so the audit catches them before training",
        samples=bad_inputs,
    )


def _forward_fault(name: str, module: nn.Module, inputs_ok: bool, cause: str) -> Localization:
    """The first module whose output went non-finite in the replayed forward."""
    if not inputs_ok:
        cause = (
            "the inputs of the first non-finite module were already non-finite, so the NaN/Inf "
            f"arose in code between modules (in the forward of the module enclosing '{name}')"
        )
    return Localization("forward", name, type(module).__name__, inputs_ok, cause)


def _backward_fault(replica: nn.Module, backward: _BackwardProbe) -> Localization:
    """After a finite forward and loss: the module whose backward went non-finite, exploded weights, or none."""
    bad_params = [n for n, p in replica.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    # Exploded weights first: with |w| in the thousands a plain matmul's backward overflows, and
    # naming that layer as a singular op would send the user after the wrong fix.
    exploded = _exploded(replica)
    if exploded is not None:
        return exploded
    culprit = backward.culprit()
    if culprit is not None:
        module = dict(replica.named_modules())[culprit]
        cause = (
            "the backward of this module turns a finite output gradient into NaN/Inf: typically sqrt/log/pow "
            "at 0 or a division by a tiny value — add an epsilon or clamp away from the singular point"
        )
        return Localization("backward", culprit, type(module).__name__, True, cause, bad_parameters=bad_params)
    if bad_params:
        owner = bad_params[0].rsplit(".", 1)[0]
        module = dict(replica.named_modules())[owner]
        return Localization(
            "backward",
            owner,
            type(module).__name__,
            True,
            "non-finite parameter gradient with finite activation gradients: check this layer's weights "
            "and lower optimizer.lr",
            bad_parameters=bad_params,
        )
    return Localization(
        "not_reproduced",
        None,
        None,
        True,
        "the replay was finite: the failure depends on randomness (dropout) or on a device kernel — "
        "rerun with stability.detect_anomaly=true, or replay the saved file",
    )


def _exploded(model: nn.Module) -> Localization | None:
    """Finite but huge weights or gradients: the mark of a learning rate too high for the gradient scale."""
    name, w_max = max(
        ((n, float(p.detach().abs().max())) for n, p in model.named_parameters() if p.numel()), key=lambda x: x[1]
    )
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    g_norm = math.sqrt(sum(float(g[torch.isfinite(g)].double().pow(2).sum()) for g in grads))
    overflow = any(bool(torch.isfinite(g).all()) and not math.isfinite(float(g.float().norm())) for g in grads)
    if w_max > EXPLODED_WEIGHT:
        module = name.rsplit(".", 1)[0]
        cause = f"weights exploded (|w| up to {w_max:.3g} in {name}): {LR_FIX}"
        return Localization("weights", module, type(model.get_submodule(module)).__name__, True, cause)
    if overflow or g_norm > 3e38:
        cause = f"the gradient norm overflows float32 ({g_norm:.3g}): {LR_FIX}"
        return Localization("backward", None, None, True, cause)
    return None


class NonFiniteInspector:
    """Failure-path handler: save the offending batch and state, then localise by replay.

    Args:
        run_dir: the run directory; files go to ``run_dir/nonfinite/step_N.pt``.
        save: write the batch and the model/optimizer/scaler state.
        replay: replay the batch with hooks to name the first non-finite module.
        max_files: save at most this many files per run (each holds the model and optimizer state;
            a long run under ``skip`` or ``rollback`` must not fill the disk).
    """

    def __init__(self, run_dir: str | Path, save: bool = True, replay: bool = True, max_files: int = 10) -> None:
        self.folder = Path(run_dir) / "nonfinite"
        self.save = save
        self.replay = replay
        self.max_files = max_files
        self.saved = 0
        self.events: list[dict[str, Any]] = []

    def __call__(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        batch: Batch,
        ctc: nn.Module,
        autocast: Any = None,
    ) -> str:
        """Handle one non-finite step; return the text appended to the guard's message."""
        parts = []
        path = None
        if self.save and self.saved >= self.max_files:
            parts.append(f"not saved: stability.max_nonfinite_files={self.max_files} files already in {self.folder}")
        elif self.save:
            self.saved += 1
            path = self.folder / f"step_{step}.pt"
            try:
                self._save(step, model, optimizer, scaler, batch, path)
                parts.append(f"batch and state saved to {path}")
            except OSError as e:  # a full disk must not hide the non-finite step (nor, under DDP, hang the peers)
                log.exception("could not save the non-finite batch to %s", path)
                parts.append(f"not saved: {type(e).__name__}: {e}")
                path = None
        found = None
        if self.replay:
            try:
                found = localize(model, batch, ctc, autocast)
                parts.insert(0, found.summary())
            except Exception as e:  # the diagnosis must never hide the original failure
                log.exception("replay of the non-finite batch failed")
                parts.insert(0, f"replay failed: {type(e).__name__}: {e}")
        self.events.append({"step": step, "file": str(path) if path else None, **(found.to_dict() if found else {})})
        text = "; ".join(parts)
        if text:
            log.error("non-finite step %d: %s", step, text)  # in train.log whatever the policy does next
        return text

    def _save(self, step: int, model, optimizer, scaler, batch: Batch, path: Path) -> None:
        save_checkpoint(
            {
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "batch": {
                    "inputs": batch.inputs.detach().cpu(),
                    "input_lengths": batch.input_lengths.cpu(),
                    "targets": batch.targets.cpu(),
                    "target_lengths": batch.target_lengths.cpu(),
                    "texts": list(batch.texts),
                    "ids": list(batch.ids),
                },
            },
            path,
        )


def load_nonfinite(path: str | Path) -> tuple[dict[str, Any], Batch]:
    """Load a ``nonfinite/step_N.pt`` file: the state dicts and the :class:`Batch` to replay."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    b = state["batch"]
    batch = Batch(b["inputs"], b["input_lengths"], b["targets"], b["target_lengths"], b["texts"], b["ids"])
    return state, batch
