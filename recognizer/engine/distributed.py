"""Data-parallel training under ``torchrun``: the process group, rank roles and the few collectives the loop needs.

``recognizer-train`` is the same command with one process or many::

    torchrun --standalone --nproc_per_node=4 $(which recognizer-train) hydra.run.dir=outputs/ddp ...

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_distributed` reads them and
joins the process group (NCCL on CUDA, gloo on CPU). Without them everything here is a no-op on a
:class:`Dist` of size 1, so the single-process path pays nothing.

Who does what (see :mod:`recognizer.train` and :mod:`recognizer.engine.loop`):

- every rank trains on its shard of each epoch's batches (:class:`~recognizer.data.batching.EpochBatchSampler`
  with ``num_replicas``/``rank``), with the same shuffling seed and its own seed for dropout/augmentation;
- gradients are averaged by :class:`torch.nn.parallel.DistributedDataParallel`;
- the non-finite decision and the preemption flag are all-reduced every step, so ranks never diverge
  (one rank skipping a step or stopping while the others wait would hang the job);
- validation runs on a shard per rank and the edit/loss counts are summed across ranks, so val CER is
  exactly the single-process value;
- rank 0 alone writes checkpoints, metrics, reports and predictions.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. ``Dist()`` is a single process (every method a no-op)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any rank."""
        if not self.enabled:
            return flag
        t = torch.tensor([float(flag)], device=_collective_device())
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return bool(t.item())

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over ranks (float64: edit counts stay exact)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
        return t.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (any picklable object)."""
        if not self.enabled:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0, device=_collective_device())
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (tensors and plain containers).

        Sent as ``torch.save`` bytes and read back with ``weights_only=True``: ``all_gather_object``
        cannot unpickle tensors in this torch version, and nothing sent can run code when read.
        """
        if not self.enabled:
            return [obj]
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        out: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(out, buffer.getvalue())
        return [torch.load(io.BytesIO(b), weights_only=True) for b in out]

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. generates and caches a data set), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def _collective_device() -> torch.device:
    """NCCL collectives need CUDA tensors; gloo takes CPU tensors."""
    if torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def env_dist() -> Dist:
    """The job layout torchrun put in the environment (a single process without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> Dist:
    """Join the process group torchrun describes; return :class:`Dist` (size 1 without torchrun).

    Args:
        device: ``trainer.device``; ``auto``/``cuda`` with CUDA available binds this rank to GPU
            ``LOCAL_RANK`` and uses NCCL, ``cuda:N`` is refused (it would pin every rank to one GPU),
            anything else uses gloo on CPU.
        timeout_s: how long a collective may wait for the slowest rank before the job fails.
    """
    if timeout_s <= 0:
        raise ValueError(f"trainer.dist_timeout_s must be > 0 seconds, got {timeout_s}")
    dist = env_dist()
    if not dist.enabled or torch_dist.is_initialized():
        return dist
    if device.startswith("cuda:"):
        raise ValueError(
            f"trainer.device={device} under torchrun: each process uses GPU LOCAL_RANK; set trainer.device=cuda "
            "(or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        if dist.local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={dist.local_rank} but this node has {torch.cuda.device_count()} GPU(s): "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(dist.local_rank)
    torch_dist.init_process_group(
        backend="nccl" if cuda else "gloo",
        rank=dist.rank,
        world_size=dist.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    if dist.is_main:
        log.info("%d ranks joined (%s)", dist.world_size, torch_dist.get_backend())
    return dist


class RankPrefix(logging.Filter):
    """Prefix ``[rank N]`` to the messages of a rank other than 0 (all ranks share the run's log file)."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.prefix = f"[rank {rank}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):  # one record passes every handler: prefix once
            record.msg = self.prefix + str(record.msg)
        return True


def quiet_other_ranks(dist: Dist) -> None:
    """Ranks other than 0 log warnings and errors only, each marked with its rank."""
    if dist.is_main:
        return
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for handler in root.handlers:
        handler.addFilter(RankPrefix(dist.rank))


def shutdown(dist: Dist) -> None:
    """Leave the process group (after the last collective)."""
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def device_for(dist: Dist, device: torch.device) -> torch.device:
    """Under DDP on CUDA each rank owns GPU ``LOCAL_RANK``."""
    if dist.enabled and device.type == "cuda":
        return torch.device("cuda", dist.local_rank)
    return device


def wrap(model: nn.Module, dist: Dist, device: torch.device) -> nn.Module | None:
    """The :class:`DistributedDataParallel` wrapper used for the training forward, or None (one process).

    The loop keeps the bare model for everything else (``output_lengths``, evaluation, checkpoints);
    DDP broadcasts rank 0's parameters and buffers here, so every rank starts from the same weights.
    """
    if not dist.enabled:
        return None
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


@torch.no_grad()
def sync_buffers(model: nn.Module, dist: Dist) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them only at the start of each training forward, so after the last step of an
    epoch every rank holds statistics updated by its own batch. Validation and checkpoints must all
    see rank 0's, the ones that are saved.
    """
    if dist.enabled:
        for buffer in model.buffers():
            torch_dist.broadcast(buffer, src=0)


@torch.no_grad()
def check_same_parameters(model: nn.Module, dist: Dist) -> int:
    """Raise if any parameter differs from rank 0's; return the number of values compared.

    Cheap (one broadcast of the weights) and run once after training: DDP keeps ranks in step by
    construction, so a difference means a bug (a rank skipped an update) that must not go unseen.
    """
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    if not dist.enabled:
        return flat.numel()
    reference = flat.clone().to(_collective_device())
    torch_dist.broadcast(reference, src=0)
    differs = float((reference.cpu() != flat.cpu()).sum())
    counts = dist.sum([differs])
    if counts[0]:
        raise RuntimeError(
            f"parameters differ across the {dist.world_size} ranks ({int(counts[0])} values differ from rank 0's): "
            "the ranks went out of step; please report this with the run's logs"
        )
    return flat.numel()
