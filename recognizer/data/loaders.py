"""Loaders over a data set's samples: a seeded, resumable batch sampler (plain or bucketed by width) and
the worker settings that keep Ctrl-C and memory under control."""

from __future__ import annotations

import multiprocessing
import signal

import torch
from torch.utils.data import DataLoader

from recognizer.alphabet import Alphabet
from recognizer.data.batching import BucketBatchSampler, Collate, EpochBatchSampler
from recognizer.data.images.lines import LineDataset

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
