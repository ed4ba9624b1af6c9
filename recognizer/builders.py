"""Wiring shared by the entry points: loaders, the audit, model restore, prediction files."""

from __future__ import annotations

import csv
import logging
import multiprocessing
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from recognizer.alphabet import Alphabet, describe_char, is_format_char, strip_format_chars
from recognizer.data.batching import BucketBatchSampler, Collate, EpochBatchSampler
from recognizer.data.images.lines import LineDataset
from recognizer.models.base import Recognizer
from recognizer.stability.audit import AuditReport, audit_split
from recognizer.stability.options import StabilityOptions
from recognizer.stability.runtime import Stability

log = logging.getLogger(__name__)


def make_loader(
    dataset: LineDataset,
    indices: list[int],
    alphabet: Alphabet,
    batch_size: int,
    shuffle: bool,
    seed: int,
    unknown: str,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = True,
    bucketing: bool = False,
    bucket_pool_batches: int = 50,
    num_replicas: int = 1,
    rank: int = 0,
    augment: bool = False,
) -> tuple[DataLoader, EpochBatchSampler]:
    """A loader over ``indices`` with a seeded, resumable batch sampler.

    The loader has its own generator so that creating an iterator never draws from the global
    RNG (which would shift dropout masks after a resume).

    Args:
        num_workers, pin_memory, persistent_workers: DataLoader settings (``persistent_workers``
            only matters with workers).
        bucketing: batch inputs of similar width (:class:`BucketBatchSampler`, widths read from
            ``dataset.widths`` without decoding); otherwise a plain seeded permutation.
        bucket_pool_batches: batches per sorting pool when bucketing.
        num_replicas, rank: under DDP, this rank's shard of the batches; training shards (``shuffle``)
            are padded to equal length, evaluation shards are not (every sample counted once).
        augment: the train loader: a dataset that augments per sample (``dataset.augmented``) is
            indexed with ``SampleKey(index, epoch, seed)``, so each draw is fixed by those three
            numbers in whichever worker loads it. Evaluation loaders leave it False: never augmented.
    """
    keyed = augment and dataset.augmented
    if bucketing:
        sampler: EpochBatchSampler = BucketBatchSampler(
            indices,
            dataset.header_widths,  # the audited indices exclude the unreadable samples (width 0 here)
            batch_size,
            shuffle=shuffle,
            seed=seed,
            pool_batches=bucket_pool_batches,
            num_replicas=num_replicas,
            rank=rank,
            pad_shards=shuffle,
            keyed=keyed,
        )
    else:
        sampler = EpochBatchSampler(
            indices,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
            pad_shards=shuffle,
            keyed=keyed,
        )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=Collate(alphabet, "unk" if unknown == "unk" else "error"),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=ignore_interrupt if num_workers > 0 else None,
        multiprocessing_context=WORKER_START if num_workers > 0 else None,
    )
    return loader, sampler


#: How loader workers start. A forked worker inherits the whole heap of the process that forks it; the
#: evaluation workers are forked at the first validation, when the training process has grown to gigabytes,
#: and since training rewrites those pages, each worker ends up holding its own copy of them (measured in
#: RESULTS.md, "Memory"). A forkserver worker starts from a small, clean process instead (the data set is
#: pickled to it once; persistent workers pay that once per run). Platforms without it use their default.
WORKER_START = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else None


def ignore_interrupt(worker_id: int) -> None:
    """Loader workers ignore Ctrl-C: the terminal sends SIGINT to the whole process group, and the main
    process turns the first one into a checkpoint at the next step boundary, which needs its workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_audit(
    split: str,
    dataset: LineDataset,
    alphabet: Alphabet,
    model: Recognizer,
    stability: Stability,
    training: bool | None = None,
    **kwargs: Any,
) -> AuditReport:
    """Audit one split with the ``stability`` config node's policies (``kwargs``: more of :func:`audit_split`'s).

    Samples whose headers the dataset could not use are violations of their reason; what the
    dataset's reader filtered out before (``dataset.filtered``) is carried into the report.
    ``stability.min_frames_per_label`` guards the CTC gradient, so it applies to the samples a model
    is trained on (``training``; by default the train split): validation and test keep every sample
    CTC can align at all (the exact bound), so a score is never flattered by leaving hard lines out.

    With ``stability.strip_format_chars``, invisible format characters the alphabet does not list are
    first removed from the dataset's transcripts (logged), so training, scoring and the audit all see
    the cleaned text; otherwise the audit reports them (reason ``invisible``).
    """
    stability = StabilityOptions.from_config(stability)
    if training is None:
        training = split == "train"
    if stability.strip_format_chars:
        strip_invisible(split, dataset, alphabet)
    report = audit_split(
        split,
        dataset.ids,
        dataset.texts,
        dataset.header_widths,
        alphabet,
        model.output_lengths,
        policy=stability.audit_policy,
        unknown=stability.unknown,
        min_frames_per_label=stability.min_frames_per_label if training else 0.0,
        max_label_length=stability.max_label_length,
        load_input=dataset.load if stability.scan_inputs else None,
        unreadable=dataset.unreadable,
        **kwargs,
    )
    report.filtered = dict(dataset.filtered)
    return report


def strip_invisible(split: str, dataset: LineDataset, alphabet: Alphabet) -> int:
    """Remove invisible format characters that ``alphabet`` does not list from ``dataset``'s transcripts.

    Returns:
        How many transcripts changed (the characters removed are logged by code point).
    """
    keep = [s for s in alphabet.symbols if len(s) == 1]
    removed: Counter[str] = Counter()
    for text in dataset.texts:
        removed.update(c for c in text if is_format_char(c) and c not in keep)
    changed = dataset.map_texts(lambda text: strip_format_chars(text, keep))
    if changed:
        chars = ", ".join(f"{describe_char(c)} ×{n}" for c, n in removed.most_common())
        log.info(
            "%s: removed %d invisible format characters from %d transcripts (stability.strip_format_chars=true): %s",
            split,
            sum(removed.values()),
            changed,
            chars,
        )
    return changed


def check_head(model: Recognizer, alphabet: Alphabet) -> None:
    """The model's output layer must have exactly ``C = charset + 1`` classes."""
    if model.num_classes != alphabet.num_classes:
        raise ValueError(
            f"the model predicts {model.num_classes} classes but the alphabet needs "
            f"{alphabet.num_classes} ({len(alphabet)} symbols + blank at id 0): the head is off by "
            f"{model.num_classes - alphabet.num_classes}. Do not set num_classes by hand; it is "
            "derived from the alphabet."
        )


def write_predictions(rows: list[tuple[str, str, str]], path: Path) -> Path:
    """Write ``id, reference, hypothesis`` rows as a TSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writerow(["id", "reference", "hypothesis"])
        writer.writerows(rows)
    return path
