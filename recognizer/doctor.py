"""Diagnose a training config without training (:func:`diagnose`, :func:`run_doctor`).

Same Hydra config as ``recognizer-train``. It audits the data (every check of the training
pre-flight, with histograms of label lengths and output frames), checks the model head against
the alphabet, reports input statistics, then runs a short dry run of ``doctor.dry_run_steps``
forward/backward/update steps at the peak learning rate with per-layer activation and gradient
norms. It ends with verdicts, each naming a known cause of NaN/inf CTC losses (or of a model that
never learns) and its fix, printed and written to ``doctor.md`` and ``doctor.json`` in the run
directory. The command is ``recognizer-doctor`` (:mod:`recognizer.cli.doctor`): it exits with 1
when a blocking problem is found, so it can gate a job script.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from recognizer.alphabet import Alphabet, normalize
from recognizer.ctc import CTCLoss
from recognizer.data.batching import Batch
from recognizer.data.loaders import make_loader
from recognizer.engine.loop import TrainState, train_step
from recognizer.engine.precision import Precision
from recognizer.engine.schedulers import constant
from recognizer.engine.seeding import seed_everything
from recognizer.models.base import Recognizer
from recognizer.run import Run, build_run, check_head
from recognizer.stability.audit import AuditReport
from recognizer.stability.guard import NonFiniteGuard
from recognizer.stability.localize import FP16_MAX, localize
from recognizer.stability.options import StabilityOptions
from recognizer.stability.runtime import make_ctc, make_guard

log = logging.getLogger(__name__)

BLOCKING, WARNING, OK = "blocking", "warning", "ok"

#: Every verdict code → (the known cause, its fix).
CAUSES: dict[str, tuple[str, str]] = {
    "head_size": (
        "class count off: the model's output layer and the alphabet disagree (blank is id 0, C = charset + 1)",
        "derive num_classes from the alphabet (never set it by hand); retrain or rebuild the head",
    ),
    "ids_out_of_range": (
        "label ids out of range: some labels use ids >= the model's class count, so CTC reads garbage or fails",
        "make the head size match the alphabet (charset + 1) and encode labels with the same alphabet",
    ),
    "labels_too_long": (
        "labels too long for the output: fewer frames than the CTC bound or the safety ratio, giving inf losses",
        "use wider inputs or a larger data.height, less width pooling (model.pools), or shorter labels; "
        "or set stability.audit_policy=drop",
    ),
    "empty_labels": (
        "empty labels (or labels of only spaces): the loss only teaches blank (or a space) and pushes the model "
        "towards blank collapse",
        "fix or remove the empty transcripts, or set stability.audit_policy=drop",
    ),
    "unknown_symbols": (
        "symbols outside the alphabet would be encoded as wrong ids; invisible format characters (U+200B, "
        "U+200F, U+FEFF, ...) are symbols no image shows",
        "add them to the alphabet file, or set stability.unknown=unk or =drop; invisible ones: remove them or set "
        "stability.strip_format_chars=true",
    ),
    "non_finite_inputs": (
        "non-finite inputs (NaN/Inf values) make every loss of their batch NaN",
        "fix or remove the files the audit names",
    ),
    "unreadable_inputs": (
        "unusable input files (corrupt, truncated, empty, silent, missing, out of range, too large to decode "
        "or at the wrong sample rate) would stop training when they are loaded",
        "fix or remove the files the audit names (each message says how), or set stability.audit_policy=drop",
    ),
    "inputs_not_normalised": (
        "non-normalised inputs: a large input range saturates activations and inflates gradients",
        "scale inputs to about [0, 1] or zero mean / unit variance in the data pipeline",
    ),
    "lr_too_high": (
        "learning rate too high for the observed gradient scale: updates are a large fraction of the weights",
        "lower optimizer.lr (÷3 to ÷10), keep trainer.grad_clip > 0, lengthen scheduler.warmup_steps",
    ),
    "fp16_overflow": (
        f"fp16 overflow risk: activations approach or exceed the float16 maximum {FP16_MAX:g}",
        "use trainer.precision=bf16-mixed or 32, or add normalisation before the large layer",
    ),
    "exploding_layer": (
        "an exploding layer: its gradient or activation norm is orders of magnitude above the others",
        "check that layer's initialisation and normalisation; lower optimizer.lr; keep trainer.grad_clip > 0",
    ),
    "vanishing_layer": (
        "a vanishing layer: (almost) no gradient reaches it, so it does not learn",
        "check for dead activations, saturated recurrent gates or a detached branch; add normalisation",
    ),
    "nonfinite_step": (
        "a dry-run step produced a non-finite loss or gradient",
        "see the localisation: the named module and cause",
    ),
}

AUDIT_CODES = {
    "empty": "empty_labels",
    "whitespace_only": "empty_labels",
    "invisible": "unknown_symbols",
    "unknown_symbol": "unknown_symbols",
    "too_long": "labels_too_long",
    "infeasible": "labels_too_long",
    "below_ratio": "labels_too_long",
    "non_finite": "non_finite_inputs",
    "unreadable": "unreadable_inputs",
    "empty_input": "unreadable_inputs",
    "truncated": "unreadable_inputs",
    "silent": "unreadable_inputs",
    "wrong_rate": "unreadable_inputs",
    "missing_file": "unreadable_inputs",
    "out_of_range": "unreadable_inputs",
    "too_large": "unreadable_inputs",
}


@dataclass
class DoctorOptions:
    """Doctor settings (``recognizer/conf/doctor.yaml``, node ``doctor``). See the YAML for each key's meaning."""

    dry_run_steps: int = 3
    num_classes: int | None = None
    histogram_bins: int = 8
    max_input_abs: float = 10.0
    max_update_ratio: float = 0.05
    max_loss_growth: float = 3.0
    explode_factor: float = 1e3
    vanish_factor: float = 1e-5
    fp16_margin: float = 8.0


@dataclass
class Verdict:
    """One finding: a known cause and its fix, with the evidence."""

    code: str
    severity: str  # blocking | warning | ok
    evidence: str
    cause: str = ""
    fix: str = ""

    def __post_init__(self) -> None:
        if not self.cause and self.code in CAUSES:
            self.cause, self.fix = CAUSES[self.code]


@dataclass
class DoctorReport:
    """Everything the doctor found."""

    verdicts: list[Verdict] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    histograms: dict[str, dict[str, list]] = field(default_factory=dict)
    inputs: dict[str, float] = field(default_factory=dict)
    dry_run: list[dict[str, Any]] = field(default_factory=list)
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def blocking(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.severity == BLOCKING]

    def codes(self, severity: str | None = None) -> set[str]:
        return {v.code for v in self.verdicts if severity is None or v.severity == severity}

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": not self.blocking,
            "verdicts": [asdict(v) for v in self.verdicts],
            "model": self.model,
            "audit": self.audit,
            "histograms": self.histograms,
            "inputs": self.inputs,
            "dry_run": self.dry_run,
            "layers": self.layers,
        }


# ----------------------------------------------------------------------------- data and head


def histogram(values: list[float], bins: int) -> dict[str, list]:
    """Equal-width histogram: ``{"edges": [...], "counts": [...]}`` (``bins`` bins, at most)."""
    if not values:
        return {"edges": [], "counts": []}
    lo, hi = min(values), max(values)
    if hi == lo:
        return {"edges": [lo, hi], "counts": [len(values)]}
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    return {"edges": [lo + i * width for i in range(bins + 1)], "counts": counts}


def length_histograms(dataset: Any, alphabet: Alphabet, model: Recognizer, bins: int) -> dict[str, dict[str, list]]:
    """Histograms of label lengths, output frames and frames per label over one split."""
    readable = [i for i in range(len(dataset)) if i not in dataset.unreadable]  # the audit reports the others
    labels = [len(normalize(dataset.texts[i])) for i in readable]
    widths = [dataset.header_widths[i] for i in readable]
    frames = model.output_lengths(torch.tensor(widths, dtype=torch.long)).tolist()
    ratios = [f / n for f, n in zip(frames, labels) if n > 0]
    return {
        "label_length": histogram([float(n) for n in labels], bins),
        "output_frames": histogram([float(f) for f in frames], bins),
        "frames_per_label": histogram(ratios, bins),
    }


def head_verdicts(model: Recognizer, alphabet: Alphabet, dataset: Any) -> list[Verdict]:
    """The head size against the alphabet, and label ids against the head."""
    try:
        check_head(model, alphabet)
    except ValueError as e:
        verdicts = [Verdict("head_size", BLOCKING, str(e))]
    else:
        return [Verdict("head_size", OK, f"{model.num_classes} classes = {len(alphabet)} symbols + blank")]
    top = model.num_classes - 1
    out_of_range: dict[str, int] = {}
    for sample_id, text in zip(dataset.ids, dataset.texts):
        ids = alphabet.encode(text, "unk") if not alphabet.unknown(text) or alphabet.has_unk else []
        if any(i > top for i in ids):
            out_of_range[sample_id] = max(ids)
    if out_of_range:
        examples = ", ".join(f"{k} (id {v})" for k, v in list(out_of_range.items())[:5])
        verdicts.append(
            Verdict(
                "ids_out_of_range",
                BLOCKING,
                f"{len(out_of_range)} train samples use label ids > {top}, the model's largest class: {examples}",
            )
        )
    return verdicts


def audit_verdicts(reports: list[AuditReport], policy: str) -> list[Verdict]:
    """Turn the audit's violations into verdicts (blocking when the training policy is ``error``)."""
    found: dict[str, list[str]] = {}
    for report in reports:
        for reason, examples in report.details.items():
            found.setdefault(AUDIT_CODES[reason], []).append(
                f"{report.split}: {reason} × {len(report.violations[reason])} (e.g. {'; '.join(examples[:3])})"
            )
    severity = BLOCKING if policy == "error" else WARNING
    verdicts = [Verdict(code, severity, " | ".join(lines)) for code, lines in found.items()]
    total = sum(r.total for r in reports)
    for code in ("labels_too_long", "empty_labels", "unknown_symbols", "non_finite_inputs", "unreadable_inputs"):
        if code not in found:
            verdicts.append(Verdict(code, OK, f"none in {total} samples"))
    return verdicts


def input_verdicts(stats: dict[str, float], opts: DoctorOptions) -> list[Verdict]:
    """Range and spread of the (finite) inputs."""
    if "input_min" not in stats:
        return [Verdict("inputs_not_normalised", WARNING, "no input statistics: set stability.scan_inputs=true")]
    lo, hi, mean, std = stats["input_min"], stats["input_max"], stats["input_mean"], stats["input_std"]
    text = f"range [{lo:.4g}, {hi:.4g}], mean {mean:.4g}, std {std:.4g}"
    if max(abs(lo), abs(hi)) > opts.max_input_abs:
        return [Verdict("inputs_not_normalised", WARNING, f"{text}: |x| > {opts.max_input_abs:g}")]
    if std < 1e-6:
        return [Verdict("inputs_not_normalised", WARNING, f"{text}: the inputs are constant")]
    return [Verdict("inputs_not_normalised", OK, text)]


# ----------------------------------------------------------------------------- dry run


class LayerProbe:
    """Forward hooks on leaf modules: RMS and max |value| of each output, per step."""

    def __init__(self, model: nn.Module) -> None:
        self.stats: dict[str, dict[str, float]] = {}
        self.handles = [
            m.register_forward_hook(self._hook(name))
            for name, m in model.named_modules()
            if name and not list(m.children())
        ]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            if isinstance(out, Tensor) and out.is_floating_point() and out.numel():
                x = out.detach().float()
                self.stats[name] = {"act_rms": float(x.pow(2).mean().sqrt()), "act_max": float(x.abs().max())}

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def grad_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of the gradient of each module's own parameters (modules without any are left out)."""
    norms = {}
    for name, m in model.named_modules():
        grads = [p.grad.detach().float() for p in m.parameters(recurse=False) if p.grad is not None]
        if grads:
            norms[name or "<model>"] = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
    return norms


def own_params(model: nn.Module) -> dict[str, list[Tensor]]:
    return {
        name or "<model>": list(m.parameters(recurse=False))
        for name, m in model.named_modules()
        if list(m.parameters(recurse=False))
    }


def dry_run(
    model: Recognizer,
    batches: list[Batch],
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    ctc: CTCLoss,
    grad_clip: float,
    guard: NonFiniteGuard | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]], Verdict | None]:
    """Train on ``batches`` with the loop's own step (:func:`~recognizer.engine.loop.train_step`) at a
    constant learning rate, measuring every layer.

    The loop's rules decide, with ``guard``'s limits (default: the defaults): under fp16's GradScaler a
    finite loss with a non-finite gradient is an overflow the scaler skips (recorded with ``overflow``;
    normal at the first steps) until :meth:`NonFiniteGuard.overflow` calls it a fault.

    Returns:
        Per-step records (loss, grad norm before clipping, largest update/weight ratio), per-layer statistics
        of the last applied step (activation RMS/max, gradient norm after clipping as the optimizer used it,
        update ratio; ``act_max`` is the largest over all steps), and a ``nonfinite_step`` verdict when a
        step went non-finite (localised).
    """
    limits = guard or NonFiniteGuard()
    # the loop's step, told to skip a fault and carry on: the doctor names it instead of stopping
    state = TrainState(
        model,
        optimizer,
        constant(optimizer, max(len(batches), 1)),
        precision,
        NonFiniteGuard("skip", len(batches) + 1, limits.min_loss_scale, limits.max_consecutive_overflows),
    )
    steps: list[dict[str, Any]] = []
    layers: dict[str, dict[str, float]] = {}
    act_max: dict[str, float] = {}
    for i, batch in enumerate(batches, 1):
        before = {k: [p.detach().clone() for p in ps] for k, ps in own_params(model).items()}
        skipped = state.guard.skipped
        probe = LayerProbe(model)
        try:
            result = train_step(state, batch, ctc, grad_clip)
        finally:
            probe.remove()
        for name, st in probe.stats.items():
            act_max[name] = max(act_max.get(name, 0.0), st["act_max"])
        record: dict[str, Any] = {"step": i, "loss": result.loss, "grad_norm": result.grad_norm}
        if state.guard.skipped > skipped:  # a non-finite fault: name the module and the cause
            found = localize(model, batch.to(precision.device), ctc, precision.autocast)
            reason = f"{state.guard.last_reason}; " if state.guard.last_reason else ""
            evidence = f"dry-run step {i}: loss={result.loss}, grad_norm={result.grad_norm}; {reason}{found.summary()}"
            return [*steps, record], layers, Verdict("nonfinite_step", BLOCKING, evidence, cause=found.cause, fix="")
        if not result.applied:  # an ordinary fp16 overflow: GradScaler skipped it and lowered the scale
            steps.append(record | {"max_update_ratio": 0.0, "overflow": True})
            continue
        ratios = update_ratios(model, before)
        layers = {name: dict(st, act_max=act_max[name]) for name, st in probe.stats.items()}
        for name, g in grad_norms(model).items():
            layers.setdefault(name, {}).update(grad_norm=g, update_ratio=ratios[name])
        steps.append(record | {"max_update_ratio": max(ratios.values(), default=0)})
    return steps, layers, None


def update_ratios(model: nn.Module, before: dict[str, list[Tensor]]) -> dict[str, float]:
    """Per module, ‖new − old‖ / ‖old‖ of its own parameters (``before``: :func:`own_params` cloned)."""
    ratios = {}
    for k, ps in own_params(model).items():
        delta = math.sqrt(sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(ps, before[k])))
        norm = math.sqrt(sum(float(b.pow(2).sum()) for b in before[k]))
        ratios[k] = delta / norm if norm > 1e-12 else 0.0
    return ratios


def dynamics_verdicts(
    steps: list[dict[str, Any]],
    layers: dict[str, dict[str, float]],
    lr: float,
    precision: Precision,
    opts: DoctorOptions,
) -> list[Verdict]:
    """Learning rate, exploding/vanishing layers and fp16 headroom from the dry run."""
    verdicts = []
    first, last = steps[0]["loss"], steps[-1]["loss"]
    worst = max(steps, key=lambda s: s["max_update_ratio"])
    ratio_text = f"largest update/weight ratio {worst['max_update_ratio']:.3g} at step {worst['step']}"
    if last > opts.max_loss_growth * first:
        verdicts.append(
            Verdict(
                "lr_too_high",
                BLOCKING,
                f"at lr {lr:g} the loss grew from {first:.4g} to {last:.4g} in {len(steps)} steps; {ratio_text}",
            )
        )
    elif worst["max_update_ratio"] > opts.max_update_ratio:
        verdicts.append(Verdict("lr_too_high", WARNING, f"at lr {lr:g}: {ratio_text} > {opts.max_update_ratio:g}"))
    else:
        verdicts.append(Verdict("lr_too_high", OK, f"at lr {lr:g}: {ratio_text}; loss {first:.4g} → {last:.4g}"))
    grads = {k: v["grad_norm"] for k, v in layers.items() if "grad_norm" in v}
    median = sorted(grads.values())[len(grads) // 2] if grads else 0.0
    exploding = [k for k, g in grads.items() if median > 0 and g > opts.explode_factor * median]
    vanishing = [k for k, g in grads.items() if g <= opts.vanish_factor * median]
    verdicts.append(
        Verdict("exploding_layer", WARNING, f"gradient norm > {opts.explode_factor:g} × median: {exploding}")
        if exploding
        else Verdict(
            "exploding_layer", OK, f"layer gradient norms within {opts.explode_factor:g} × median {median:.3g}"
        )
    )
    verdicts.append(
        Verdict("vanishing_layer", WARNING, f"gradient norm ≤ {opts.vanish_factor:g} × median: {vanishing}")
        if vanishing
        else Verdict("vanishing_layer", OK, f"every layer gets ≥ {opts.vanish_factor:g} × the median gradient norm")
    )
    overflows = [s["step"] for s in steps if s.get("overflow")]
    if overflows and len(overflows) == len(steps):
        verdicts.append(
            Verdict(
                "fp16_overflow",
                WARNING,
                f"every dry-run step ({overflows}) overflowed under GradScaler: the scale fell to "
                f"{precision.scaler.get_scale():g} and no update was measured; raise doctor.dry_run_steps",
            )
        )
        return verdicts
    name, peak = max(((k, v["act_max"]) for k, v in layers.items() if "act_max" in v), key=lambda kv: kv[1])
    fp16 = precision.autocast_dtype == torch.float16
    text = f"largest |activation| {peak:.4g} in '{name}' (float16 max {FP16_MAX:g}, precision {precision.name})"
    if overflows:  # normal at the first steps: the scale starts high and GradScaler halves it
        text += f"; GradScaler skipped overflowing step(s) {overflows}, as training does"
    if peak > FP16_MAX:
        verdicts.append(Verdict("fp16_overflow", BLOCKING if fp16 else WARNING, text + ": overflows under fp16"))
    elif peak > FP16_MAX / opts.fp16_margin:
        verdicts.append(Verdict("fp16_overflow", WARNING, text + f": within {opts.fp16_margin:g}× of overflow"))
    else:
        verdicts.append(Verdict("fp16_overflow", OK, text))
    return verdicts


# ----------------------------------------------------------------------------- the whole diagnosis


def diagnose(cfg: DictConfig, model: Recognizer | None = None) -> DoctorReport:
    """Run every check of the doctor on ``cfg`` (a composed ``doctor`` config).

    The data, alphabet, model, audit, device and precision are those ``recognizer-train`` would build
    (:func:`recognizer.run.build_run`); only the audit collects every violation instead of stopping.

    Args:
        cfg: the composed config (``recognizer/conf/doctor.yaml``).
        model: a model to diagnose instead of ``cfg.model`` built for the alphabet (the Python API
            for checking a hand-built or loaded model).

    Returns:
        The :class:`DoctorReport`; ``report.blocking`` lists the blocking verdicts.
    """
    opts: DoctorOptions = instantiate(cfg.doctor)
    seed_everything(cfg.seed)
    stab = StabilityOptions.from_config(cfg.stability)
    collect = stab.replace(audit_policy="drop", unknown="drop" if stab.unknown == "error" else stab.unknown)
    run = build_run(cfg, model=model, num_classes=opts.num_classes or None, audit=collect)
    model, alphabet, train_set = run.model, run.alphabet, run.datasets["train"]
    report = DoctorReport()
    report.model = {
        "type": type(model).__name__,
        "num_classes": model.num_classes,
        "alphabet_classes": alphabet.num_classes,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    report.verdicts += head_verdicts(model, alphabet, train_set)
    reports = list(run.reports.values())
    report.audit = [r.to_dict() for r in reports]
    report.verdicts += audit_verdicts(reports, stab.audit_policy)
    report.histograms = length_histograms(train_set, alphabet, model, opts.histogram_bins)
    train_stats = run.reports["train"].stats
    report.inputs = {k: v for k, v in train_stats.items() if k.startswith("input_")}
    report.verdicts += input_verdicts(train_stats, opts)
    if report.codes(BLOCKING) & {"head_size", "ids_out_of_range"}:
        log.info("dry run skipped: the head does not match the alphabet")
        return report
    _run_dry(run, opts, report)
    return report


def _run_dry(run: Run, opts: DoctorOptions, report: DoctorReport) -> None:
    """The dry run of ``opts.dry_run_steps`` training steps at the peak learning rate, and its verdicts."""
    kept = run.reports["train"].kept
    if opts.dry_run_steps < 1 or not kept:
        return
    assert run.precision is not None
    optimizer = instantiate(run.cfg.optimizer)(params=run.model.parameters())
    loader, _ = make_loader(
        run.datasets["train"], kept, run.alphabet, run.data.batch_size, shuffle=True, seed=run.cfg.seed, unknown="unk"
    )
    batches = list(itertools.islice(loader, opts.dry_run_steps))
    guard = make_guard(run.stability)  # the training loop's fp16 overflow rule
    ctc = make_ctc(run.stability)  # the training loss (backend, reduction, zero_infinity)
    steps, layers, failure = dry_run(run.model, batches, optimizer, run.precision, ctc, run.trainer.grad_clip, guard)
    report.dry_run, report.layers = steps, layers
    lr = optimizer.param_groups[0]["lr"]
    if failure is not None:
        report.verdicts.append(failure)
        grew = len(steps) > 1 and steps[-2]["loss"] > opts.max_loss_growth * steps[0]["loss"]
        if grew or "learning rate is too high" in failure.cause:
            losses = " → ".join(f"{s['loss']:.4g}" for s in steps)
            report.verdicts.append(
                Verdict("lr_too_high", BLOCKING, f"the dry run at lr {lr:g} diverged: loss {losses}")
            )
        return
    report.verdicts += dynamics_verdicts(steps, layers, lr, run.precision, opts)


# ----------------------------------------------------------------------------- output


def render_text(report: DoctorReport) -> str:
    """The terminal report: findings first, then the verdicts."""
    lines = [f"recognizer-doctor — {report.model['type']}, {report.model['num_classes']} classes"]
    for audit in report.audit:
        lines.append(f"audit[{audit['split']}]: {audit['total']} samples, {audit['dropped']} with violations")
    for name, h in report.histograms.items():
        lines.append(f"histogram {name}:")
        for lo, hi, n in zip(h["edges"], h["edges"][1:], h["counts"]):
            lines.append(f"  [{lo:7.2f}, {hi:7.2f}) {n:6d} {'#' * min(40, math.ceil(40 * n / max(h['counts'])))}")
    if report.dry_run:
        lines.append("dry run: " + ", ".join(f"step {s['step']} loss {s['loss']:.4g}" for s in report.dry_run))
        lines.append(f"  {'layer':32s} {'act_rms':>10s} {'act_max':>10s} {'grad_norm':>10s} {'upd/w':>9s}")
        for name, s in report.layers.items():
            cells = [
                _cell(s, k, w) for k, w in (("act_rms", 10), ("act_max", 10), ("grad_norm", 10), ("update_ratio", 9))
            ]
            lines.append(f"  {name:32s} " + " ".join(cells))
    lines.append("verdicts:")
    order = {BLOCKING: 0, WARNING: 1, OK: 2}
    for v in sorted(report.verdicts, key=lambda v: order[v.severity]):
        lines.append(f"  [{v.severity.upper():8s}] {v.code}: {v.evidence}")
        if v.severity != OK:
            lines.append(f"             cause: {v.cause}")
            if v.fix:
                lines.append(f"             fix: {v.fix}")
    n = len(report.blocking)
    lines.append(f"result: {'FAIL' if n else 'PASS'} ({n} blocking, {len(report.codes(WARNING))} warnings)")
    return "\n".join(lines)


def _cell(stats: dict[str, float], key: str, width: int) -> str:
    """A right-aligned number, or ``-`` for a layer without that value (no parameters: no gradient)."""
    return f"{stats[key]:{width}.3g}" if key in stats else f"{'-':>{width}s}"


def render_markdown(report: DoctorReport) -> str:
    """``doctor.md``: the verdict table, then the histograms and the per-layer table."""
    n = len(report.blocking)
    md = [f"# recognizer-doctor: {'FAIL' if n else 'PASS'}", "", "| severity | verdict | evidence | cause | fix |"]
    md.append("|---|---|---|---|---|")
    for v in report.verdicts:
        cells = [v.severity, v.code, v.evidence, v.cause if v.severity != OK else "", v.fix if v.severity != OK else ""]
        md.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    for name, h in report.histograms.items():
        md += ["", f"## {name}", "", "| bin | count |", "|---|---|"]
        md += [f"| {lo:.2f}–{hi:.2f} | {c} |" for lo, hi, c in zip(h["edges"], h["edges"][1:], h["counts"])]
    if report.layers:
        md += ["", "## Dry run, last step", "", "| layer | act RMS | act max | grad norm | update/weight |"]
        md.append("|---|---|---|---|---|")
        for name, s in report.layers.items():
            md.append(
                f"| {name} | "
                + " | ".join(_cell(s, k, 0).strip() for k in ("act_rms", "act_max", "grad_norm", "update_ratio"))
                + " |"
            )
    return "\n".join(md) + "\n"


def write_report(report: DoctorReport, run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``doctor.json`` and ``doctor.md`` into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = run_dir / "doctor.json", run_dir / "doctor.md"
    json_path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report), encoding="utf-8")
    return json_path, md_path


def run_doctor(cfg: DictConfig, model: Recognizer | None = None) -> DoctorReport:
    """Diagnose, print the terminal report and write the files. Returns the report."""
    report = diagnose(cfg, model)
    json_path, md_path = write_report(report, cfg.paths.output_dir)
    print(render_text(report))
    print(f"report: {md_path} and {json_path}")
    return report
