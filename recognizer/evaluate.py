"""Evaluate a checkpoint: CER/WER on a data split and a predictions TSV (id, reference, hypothesis).

The command is ``recognizer-eval`` (:mod:`recognizer.cli.eval`); :func:`evaluate_checkpoint` is the library call.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from recognizer.checkpoint import build_model, load_checkpoint, preprocessing_settings
from recognizer.data.loaders import make_loader
from recognizer.decoding import GreedyDecoder, build_decoder, decode_loader
from recognizer.engine.loop import evaluate_loader
from recognizer.engine.precision import resolve_device, resolve_precision
from recognizer.metrics import ErrorRates
from recognizer.score import score, suspect_summary, write_predictions
from recognizer.stability.options import StabilityOptions
from recognizer.stability.runtime import make_ctc, run_audit

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from recognizer.alphabet import Alphabet
    from recognizer.data.images.lines import LineDataset
    from recognizer.models.base import Recognizer
    from recognizer.stability.audit import AuditReport

log = logging.getLogger(__name__)


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, float]:
    """Score ``cfg.checkpoint`` on ``cfg.split`` of ``cfg.data``; return the metrics."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(cfg.checkpoint)
    trained = ckpt["config"]
    stability = StabilityOptions.from_config(trained["stability"], strict=False)  # a newer version may add keys
    # the checkpoint's policies were for its training data: the eval config may replace them
    stability = stability.replace(**{k: cfg[k] for k in ("audit_policy", "unknown") if cfg[k] is not None})
    data = instantiate(eval_data_config(cfg.data, ckpt, stability.audit_policy))
    dataset = data.dataset(cfg.split)
    model, alphabet = build_model(ckpt, cfg.checkpoint)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device, model.bf16_on_cpu)
    model.to(device)
    check_unk_scorable(stability.unknown, alphabet, cfg.checkpoint, trained["stability"]["unknown"])
    loader, report = scored_loader(
        cfg.split, dataset, alphabet, model, stability, data.batch_size, data.loader_options()
    )
    ctc = make_ctc(stability)  # the loss the model was trained with
    values, rows = evaluate_loader(model, loader, ctc, alphabet, precision, keep_predictions=True)
    decoder = build_decoder(cfg.decoding, alphabet.symbols)
    if not isinstance(decoder, GreedyDecoder):  # evaluate_loader() decodes greedily; keep its figures beside
        values |= {"greedy_cer": values["cer"], "greedy_wer": values["wer"]}
        rows = decode_loader(model, loader, decoder, alphabet, precision)
        rates = ErrorRates()
        rates.update([r[1] for r in rows], [r[2] for r in rows])
        values |= {"cer": rates.cer, "wer": rates.wer}
    metrics = {f"{cfg.split}/{k}": v for k, v in values.items()} | {f"{cfg.split}/samples": len(rows)}
    metrics |= {f"{cfg.split}/{k}": n for k, n in report.counts().items()}  # what the score does not cover
    predictions = write_predictions(rows, run_dir / f"predictions_{cfg.split}.tsv")
    if warning := suspect_summary(score(rows), cfg.split):
        log.warning("%s", warning)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    log.info("predictions written to %s", predictions)
    return metrics


def check_unk_scorable(
    unknown: str, alphabet: Alphabet, checkpoint: str, trained_unknown: str, key: str = "unknown"
) -> None:
    """Refuse to score unknown symbols as ``<unk>`` with a model whose alphabet has none.

    Args:
        unknown: the scoring policy for symbols outside the alphabet (error, drop or unk).
        alphabet: the checkpoint's alphabet.
        checkpoint: the checkpoint's path, for the message.
        trained_unknown: the checkpoint's training ``stability.unknown``, named in the message.
        key: how the caller's user sets the policy (recognizer-eval's key by default).

    Raises:
        ValueError: ``unknown`` is unk and the alphabet has no ``<unk>``.
    """
    if unknown == "unk" and not alphabet.has_unk:
        raise ValueError(
            f"{key}=unk: {checkpoint} was trained without <unk> in its alphabet (stability.unknown="
            f"{trained_unknown}), so it cannot score unknown symbols as <unk>; use {key}=drop"
        )


def scored_loader(
    split: str,
    dataset: LineDataset,
    alphabet: Alphabet,
    model: Recognizer,
    stability: StabilityOptions,
    batch_size: int,
    loader_options: dict[str, Any] | None = None,
    audit_key: str = "audit_policy",
    unknown_key: str = "unknown",
) -> tuple[DataLoader, AuditReport]:
    """The loader of the samples a checkpoint is scored on, and the audit that chose them.

    The audit runs with ``stability``'s policies as for scoring (not training): every sample CTC can align is
    kept; what it drops or filters is logged. Unknown symbols follow ``stability.unknown``.

    ``audit_key`` and ``unknown_key``: how the caller's user sets the two policies, which a refusal names as its
    fix (recognizer-eval's keys by default).

    Raises:
        AuditError: a sample breaks a rule under ``audit_policy=error`` (the message names it and the fix).
    """
    drop_hint = (
        f"set {audit_key}=drop (and {unknown_key}=drop for symbols the model does not know) to score without "
        "these samples (they are listed in the log)"
    )
    report = run_audit(
        split, dataset, alphabet, model, stability, training=False, drop_hint=drop_hint, unknown_key=unknown_key
    )
    if report.dropped or report.filtered:
        log.warning("%s", report.summary())
    loader, _ = make_loader(
        dataset,
        report.kept,
        alphabet,
        batch_size,
        shuffle=False,
        seed=0,
        unknown=stability.unknown,
        **(loader_options or {}),
    )
    return loader, report


def eval_data_config(data_cfg: DictConfig, ckpt: dict[str, Any], audit_policy: str) -> DictConfig:
    """The eval ``data`` node with the checkpoint's preprocessing (height, inversion, line cutting) and
    character mapping: the inputs are prepared as the model was trained on them, whatever the node said.

    ``audit_policy``: the scoring policy, which a reader's own bad-line policy (pages) follows.
    """
    data_cfg = data_cfg.copy()
    with open_dict(data_cfg):
        for key, value in preprocessing_settings(ckpt).items():
            if key in data_cfg and data_cfg[key] != value:
                log.info("data.%s=%s from the checkpoint (the eval config said %s)", key, value, data_cfg[key])
                data_cfg[key] = value
        if "char_map" in data_cfg and ckpt.get("char_map"):  # the mapping the model was trained with
            data_cfg.char_map = ckpt["char_map"]
        if "audit_policy" in data_cfg:
            data_cfg.audit_policy = audit_policy
    return data_cfg
