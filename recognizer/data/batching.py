"""Batches: padding, encoded targets with explicit lengths, and resumable, seeded samplers."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Sampler

from recognizer.alphabet import Alphabet


@dataclass
class Batch:
    """A padded batch. Inputs are padded with 0 along the last axis (width or time)."""

    inputs: Tensor  # (B, C, H, W) float32
    input_lengths: Tensor  # (B,) int64, real widths
    targets: Tensor  # (B, S) int64, padded with 0 (blank) beyond target_lengths
    target_lengths: Tensor  # (B,) int64
    texts: list[str]
    ids: list[str]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch with its tensors on ``device`` (texts and ids stay)."""
        return dataclasses.replace(
            self,
            inputs=self.inputs.to(device, non_blocking=non_blocking),
            input_lengths=self.input_lengths.to(device, non_blocking=non_blocking),
            targets=self.targets.to(device, non_blocking=non_blocking),
            target_lengths=self.target_lengths.to(device, non_blocking=non_blocking),
        )

    def __len__(self) -> int:
        return len(self.ids)


class Collate:
    """Turn a list of samples ``{"id", "input": (C, H, W), "text"}`` into a :class:`Batch`.

    Args:
        alphabet: encodes transcripts to ids ``1..C-1``.
        unknown: policy for symbols outside the alphabet (see :meth:`Alphabet.encode`); the
            pre-flight audit has already applied it, so ``error`` only fires on unaudited data.
    """

    def __init__(self, alphabet: Alphabet, unknown: str = "error") -> None:
        self.alphabet = alphabet
        self.unknown = unknown

    def __call__(self, samples: Sequence[dict]) -> Batch:
        inputs = [s["input"] for s in samples]
        lengths = torch.tensor([x.shape[-1] for x in inputs], dtype=torch.long)
        padded = inputs[0].new_zeros(len(inputs), *inputs[0].shape[:-1], int(lengths.max()))
        for i, x in enumerate(inputs):
            padded[i, ..., : x.shape[-1]] = x
        encoded = [self.alphabet.encode(s["text"], self.unknown) for s in samples]
        target_lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
        targets = torch.zeros(len(encoded), max(1, int(target_lengths.max())), dtype=torch.long)
        for i, e in enumerate(encoded):
            targets[i, : len(e)] = torch.tensor(e, dtype=torch.long)
        return Batch(
            inputs=padded,
            input_lengths=lengths,
            targets=targets,
            target_lengths=target_lengths,
            texts=[s["text"] for s in samples],
            ids=[s["id"] for s in samples],
        )


@dataclass(frozen=True)
class SampleKey:
    """A train sample as a keyed sampler names it: which sample, in which epoch, of which run.

    A dataset that augments per sample (:class:`~recognizer.data.images.lines.LineDataset` with
    ``augment``) draws from a generator seeded by these three numbers, so the draw is the same in
    any loader worker and after a resume. Datasets index with plain ints everywhere else.
    """

    index: int
    epoch: int
    seed: int


class EpochBatchSampler(Sampler[list[int | SampleKey]]):
    """Batches of indices in a per-epoch permutation seeded by ``(seed, epoch)``.

    The order depends only on the seed and the epoch, so a run resumed in the middle of an
    epoch (``start_batch``) sees exactly the batches the uninterrupted run would have seen.

    Distributed (``num_replicas > 1``): every rank builds the same list of batches (same seed) and
    takes every ``num_replicas``-th one from position ``rank``, so a step's global batch is
    ``num_replicas × batch_size`` samples and no two ranks share a batch. ``pad_shards`` (training)
    repeats the first batches so every rank gets the same number of batches (DDP needs every rank
    to step together); without it (evaluation) every batch is seen exactly once and ranks may get
    one batch less.

    Args:
        indices: the dataset indices to draw from (after the audit dropped any).
        batch_size: samples per batch.
        shuffle: permute per epoch; otherwise keep ``indices`` order.
        seed: base seed of the permutation (the same on every rank).
        drop_last: drop a final incomplete batch.
        num_replicas: number of ranks sharing the epoch.
        rank: this rank's position, ``0..num_replicas-1``.
        pad_shards: make all shards equally long by repeating batches from the start of the epoch.
        keyed: yield :class:`SampleKey` ``(index, epoch, seed)`` instead of bare indices (the train
            loader of a dataset that augments per sample: it learns the epoch inside the workers).
    """

    def __init__(
        self,
        indices: Sequence[int],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
        pad_shards: bool = True,
        keyed: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in 0..{num_replicas - 1} for num_replicas={num_replicas}, got {rank}")
        self.indices = list(indices)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.pad_shards = pad_shards
        self.keyed = keyed
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def _batches(self) -> list[list[int]]:
        order = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = [self.indices[i] for i in torch.randperm(len(self.indices), generator=g)]
        return self._cut(order)

    def _cut(self, order: list[int]) -> list[list[int]]:
        """Cut ``order`` into batches (the last one possibly incomplete, unless ``drop_last``)."""
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def _shard(self, batches: list[list[int]]) -> list[list[int]]:
        """This rank's batches of the epoch (all of them with one replica)."""
        if self.num_replicas == 1:
            return batches
        if self.pad_shards and batches:
            short = -len(batches) % self.num_replicas
            batches = batches + [batches[i % len(batches)] for i in range(short)]
        return batches[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int | SampleKey]]:
        for batch in self._shard(self._batches())[self.start_batch :]:
            yield [SampleKey(i, self.epoch, self.seed) for i in batch] if self.keyed else [*batch]

    def __len__(self) -> int:
        n = len(self.indices)
        full = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        if self.num_replicas > 1 and self.pad_shards:
            full = -(-full // self.num_replicas)
        elif self.num_replicas > 1:
            full = len(range(self.rank, full, self.num_replicas))
        return max(0, full - self.start_batch)


class BucketBatchSampler(EpochBatchSampler):
    """Like :class:`EpochBatchSampler`, but each batch holds inputs of similar width (less padding).

    Per epoch, with a generator seeded by ``(seed, epoch)`` only: permute the indices, cut the
    permutation into pools of ``pool_batches × batch_size`` samples, sort each pool by width (ties
    keep the permutation order), cut it into batches, then shuffle all batches. Batch contents vary
    from epoch to epoch (the pools do) and the order stays a pure function of ``(seed, epoch)``, so
    ``set_epoch(epoch, start_batch)`` resumes mid-epoch exactly. Every pool but the last holds whole
    batches, so the number of batches (``__len__``) equals :class:`EpochBatchSampler`'s.

    Args:
        indices: the dataset indices to draw from (after the audit dropped any).
        widths: input width (or frames) of every sample of the dataset, indexed like the dataset.
        batch_size: samples per batch.
        shuffle: permute per epoch; otherwise sort all of ``indices`` by width, in one pool.
        seed: base seed of the permutation.
        drop_last: drop the one incomplete batch (the last of the last pool).
        pool_batches: batches per sorting pool; larger pools pad less but vary less between epochs.
        num_replicas, rank, pad_shards: distributed sharding of the batches, as in :class:`EpochBatchSampler`
            (bucketing happens before sharding, so every rank gets batches of similar widths).
        keyed: yield :class:`SampleKey` instead of bare indices, as in :class:`EpochBatchSampler`.
    """

    def __init__(
        self,
        indices: Sequence[int],
        widths: Sequence[int],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        pool_batches: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
        pad_shards: bool = True,
        keyed: bool = False,
    ) -> None:
        super().__init__(
            indices,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            num_replicas=num_replicas,
            rank=rank,
            pad_shards=pad_shards,
            keyed=keyed,
        )
        if pool_batches < 1:
            raise ValueError(f"pool_batches must be >= 1 (batches per sorting pool), got {pool_batches}")
        missing = [i for i in self.indices if not 0 <= i < len(widths)]
        if missing:
            raise ValueError(
                f"{len(missing)} index(es) have no width (first: {missing[0]}; {len(widths)} widths): "
                "pass the widths of the dataset the indices point into"
            )
        self.widths = list(widths)
        self.pool_batches = pool_batches

    def _batches(self) -> list[list[int]]:
        if not self.shuffle:
            order = sorted(self.indices, key=lambda i: self.widths[i])
            return self._cut(order)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = [self.indices[i] for i in torch.randperm(len(self.indices), generator=g)]
        size = self.pool_batches * self.batch_size
        pools = [order[start : start + size] for start in range(0, len(order), size)]
        batches = [b for pool in pools for b in self._cut(sorted(pool, key=lambda i: self.widths[i]))]
        return [batches[i] for i in torch.randperm(len(batches), generator=g)]


def padding_cells(input_lengths: Tensor, padded_width: int) -> tuple[int, int]:
    """``(padded cells, total cells)`` along the padded axis of one batch (a few CPU ops, no pass).

    Args:
        input_lengths: ``(B,)`` real widths (CPU).
        padded_width: the padded width of the batch (``inputs.shape[-1]``).
    """
    total = len(input_lengths) * padded_width
    return total - int(input_lengths.sum()), total
