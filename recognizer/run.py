"""One run setup for every command that trains or looks at training: :func:`build_run` → :class:`Run`.

``recognizer-train``, ``recognizer-doctor`` and ``recognizer-lr-find`` compose the same config groups;
from them this module builds, in this order and the same way for all three: the data and its splits →
the alphabet → the model (its head checked against the alphabet) → the audit of every split (the
pre-flight) → the device and precision. Loaders over the audited samples come from the :class:`Run`
(:meth:`Run.train_loader`, :meth:`Run.eval_loader`), so a setting read in one command is read in all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from recognizer.alphabet import Alphabet
from recognizer.data.base import SplitData
from recognizer.data.batching import EpochBatchSampler
from recognizer.data.loaders import make_loader
from recognizer.engine.distributed import Dist, device_for
from recognizer.engine.loop import TrainerOptions
from recognizer.engine.memory import set_malloc_policy
from recognizer.engine.precision import Precision, resolve_device, resolve_precision
from recognizer.models.base import Recognizer
from recognizer.stability.audit import AuditReport
from recognizer.stability.options import StabilityOptions
from recognizer.stability.runtime import run_audit

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

#: Chooses the alphabet once the data is read: ``(data, train split) → Alphabet`` (training resumes
#: with its checkpoint's, fine-tuning merges the base model's); None: :func:`data_alphabet`.
AlphabetChoice = Callable[[SplitData, Any], Alphabet]


def data_alphabet(data: SplitData, train_set: Any, unknown: str) -> Alphabet:
    """The configured alphabet file, else the symbols of the train transcripts (with ``<unk>`` if asked)."""
    return data.alphabet() or Alphabet.from_texts(train_set.texts, with_unk=unknown == "unk")


def check_head(model: Recognizer, alphabet: Alphabet) -> None:
    """The model's output layer must have exactly ``C = charset + 1`` classes."""
    if model.num_classes != alphabet.num_classes:
        raise ValueError(
            f"the model predicts {model.num_classes} classes but the alphabet needs "
            f"{alphabet.num_classes} ({len(alphabet)} symbols + blank at id 0): the head is off by "
            f"{model.num_classes - alphabet.num_classes}. Do not set num_classes by hand; it is "
            "derived from the alphabet."
        )


@dataclass
class Run:
    """What a command has before its first step: options, data, alphabet, model, audits, device."""

    cfg: DictConfig
    trainer: TrainerOptions
    stability: StabilityOptions
    data: SplitData
    datasets: dict[str, Any]  # split → LineDataset | AudioDataset
    alphabet: Alphabet
    model: Recognizer
    reports: dict[str, AuditReport] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: Precision | None = None

    def train_loader(self, indices: Sequence[int] | None = None, **shard: Any) -> tuple[DataLoader, EpochBatchSampler]:
        """The shuffled, seeded train loader over ``indices`` (default: the audited train samples).

        Batches follow ``trainer.bucketing``; samples are augmented when the data config enables it.
        ``shard``: ``num_replicas``/``rank`` under DDP.
        """
        kept = list(self.reports["train"].kept if indices is None else indices)
        return make_loader(
            self.datasets["train"],
            kept,
            self.alphabet,
            self.data.batch_size,
            shuffle=True,
            seed=self.cfg.seed,
            unknown=self.stability.unknown,
            **self.data.loader_options(),
            bucketing=self.trainer.bucketing,
            bucket_pool_batches=self.trainer.bucket_pool_batches,
            augment=True,
            **shard,
        )

    def eval_loader(self, split: str, **shard: Any) -> DataLoader:
        """The unshuffled, never augmented loader of ``split``'s audited samples (``shard``: this rank's, DDP)."""
        loader, _ = make_loader(
            self.datasets[split],
            self.reports[split].kept,
            self.alphabet,
            self.data.batch_size,
            shuffle=False,
            seed=self.cfg.seed,
            unknown=self.stability.unknown,
            **self.data.loader_options(),
            **shard,
        )
        return loader


def build_run(
    cfg: DictConfig,
    dist: Dist | None = None,
    *,
    trainer: TrainerOptions | None = None,
    splits: Sequence[str] = SPLITS,
    alphabet: AlphabetChoice | None = None,
    model: Recognizer | None = None,
    num_classes: int | None = None,
    audit: StabilityOptions | None = None,
) -> Run:
    """Build the run ``cfg`` describes, up to (not including) the optimizer.

    Args:
        cfg: a composed ``train``, ``doctor`` or ``lr_find`` config.
        dist: this process's place under torchrun (default: one process); rank 0 reads the data first.
        trainer: ``cfg.trainer`` already instantiated (training reads it before the data); None: built here.
        splits: the splits to read and audit (``test`` only where the data config has one).
        alphabet: how to choose the alphabet (default :func:`data_alphabet`).
        model: a model to use instead of building ``cfg.model`` (the doctor's Python API).
        num_classes: build the head with this many classes instead of the alphabet's, and do not
            check it (the doctor shows what a wrong head does); None: ``C = charset + 1``, checked.
        audit: the policies of the audit when they differ from ``cfg.stability`` (the doctor collects
            every violation instead of stopping at the first split).
    """
    dist = dist or Dist()
    trainer = trainer or instantiate(cfg.trainer)
    if trainer.num_threads:  # on a busy CPU fewer threads can be several times faster
        torch.set_num_threads(trainer.num_threads)
    set_malloc_policy(trainer.malloc)  # where freed variable-size blocks go: back to the system, or kept
    stability = StabilityOptions.from_config(cfg.stability)
    with dist.main_first():  # rank 0 generates/caches embedded data before the others read it
        data: SplitData = instantiate(cfg.data)
        datasets = {split: data.dataset(split) for split in splits if split != "test" or data.has(split)}
    chosen = (alphabet or (lambda d, t: data_alphabet(d, t, stability.unknown)))(data, datasets["train"])
    if model is None:
        model = instantiate(cfg.model, num_classes=num_classes or chosen.num_classes)
        if num_classes is None:
            check_head(model, chosen)
    log.info(
        "alphabet: %d symbols + blank %r; model: %s with %.2fM parameters",
        len(chosen),
        chosen,
        type(model).__name__,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    # every split before the first step, the test split too: a bad test line fails now, not after training
    policies = audit or stability
    reports = {split: run_audit(split, ds, chosen, model, policies) for split, ds in datasets.items()}
    precision = run_precision(trainer, dist, model)
    model.to(precision.device)
    return Run(cfg, trainer, stability, data, datasets, chosen, model, reports, precision.device, precision)


def run_precision(trainer: TrainerOptions, dist: Dist, model: Recognizer | type[Recognizer]) -> Precision:
    """Where and in what precision a run of ``model`` (or of its class) trains: ``trainer.device`` (this rank's
    GPU under torchrun) and ``trainer.precision`` resolved for it (``auto``: :func:`resolve_precision`)."""
    device = device_for(dist, resolve_device(trainer.device))
    return resolve_precision(trainer.precision, device, model.bf16_on_cpu)
