"""Several processes, one training run: torch.distributed (DDP) launched by torchrun.

`zoo finetune --nproc N` starts N processes on this machine through torch.distributed.run, the
engine behind `torchrun`; `torchrun ... -m zoo.cli finetune ...` does the same across machines. Each
process learns its place from the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK) and joins
the process group: gloo on CPUs, nccl (one GPU per process) where CUDA is available.

The run is the single-process run, split. Data order, augmentation and dropout depend only on
(seed, epoch) as before; every global batch of --batch-size images is cut into one contiguous
share per rank, DDP averages the gradients, and each rank draws the dropout mask of the WHOLE
batch and keeps its rows. So, as long as no trainable BatchNorm layer normalises a share by its own
statistics, the weights equal a single process's up to float rounding. Feature extraction and
validation give each rank every world_size-th batch (the very batches one process would run) and
gather the results. Rank 0 alone reads and writes the run directory and the feature cache; the
other ranks receive its decisions by broadcast, so a node needs the images but not the run.
"""
from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from zoo.errors import ZooError
from zoo.log import quiet

T = TypeVar("T")
LAUNCHER_ENV = "ZOO_TORCHRUN_LAUNCHER"  # set by `zoo finetune --nproc`: the launcher explains failures
PEER_LOST_EXIT = 3  # a rank stopped because another one died; not the root cause
WORK_FAILED_EXIT = 1  # the CLI's status for a ZooError (and for any failure of the work)
USAGE_EXIT = 2  # the CLI's status for a UsageError (and click's usage errors)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_SINGLE = World()
_world = _SINGLE


def world() -> World:
    return _world


class PeerLost(RuntimeError):
    """Another process of the run died: this one cannot go on."""


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def reports_failures() -> bool:
    """Whether this process prints run-wide failures: rank 0, unless `zoo finetune --nproc` started it."""
    return int(os.environ.get("RANK", "0")) == 0 and LAUNCHER_ENV not in os.environ


def _lost_contact(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, dist.DistError) or any(s in text for s in ("gloo", "nccl", "connection closed",
                                                                        "connection reset", "broken pipe"))


def in_process_group(fn: Callable[..., T]) -> Callable[..., T]:
    """Run fn inside the process group torchrun describes; a plain call for a single process."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _world
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1 or _world.distributed:
            return fn(*args, **kwargs)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        backend, device = "gloo", torch.device("cpu")
        if torch.cuda.is_available():
            backend, device = "nccl", torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        created = not dist.is_initialized()
        if created:
            dist.init_process_group(backend)
        _world = World(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(), device)
        try:
            # One run, told once: rank 0 logs and shows progress; the others only say what fails.
            with quiet(logging.NOTSET if _world.is_main else logging.ERROR):
                result = fn(*args, **kwargs)
        except ZooError:
            # Every rank raises it together (from_main), so no collective is pending and the group can go.
            # Left to the interpreter's exit, gloo's threads sometimes abort the process (SIGABRT, seen in CI).
            _leave(created)
            raise
        except RuntimeError as e:
            if _lost_contact(e):
                raise PeerLost(f"process {_world.rank} of {_world.size} lost contact with the others (one of them "
                               "stopped or was killed); the last finished epoch is saved: run the same command "
                               "with --resume to continue") from e
            raise
        finally:
            _world = _SINGLE
        _leave(created)
        return result

    return wrapper


def _leave(created: bool) -> None:
    """Destroy the process group this process created, once its ranks have nothing left to exchange.

    Not after a lost peer: tearing down with a collective still waiting can hang.
    """
    if created and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------- rank 0 decides, everyone follows
def from_main(make: Callable[[], T]) -> T:
    """make() on rank 0 (alone: no collective inside), its result on every rank.

    A ZooError on rank 0 is raised on every rank, marked already_reported on the others, so the
    user reads it once and no rank waits for an answer that never comes.
    """
    global _world
    if not _world.distributed:
        return make()
    box: list = [None]
    if _world.is_main:
        current, _world = _world, _SINGLE
        try:
            box[0] = ("ok", make())
        except ZooError as e:  # its class travels too: it sets the exit status (UsageError 2, others 1)
            box[0] = ("error", (type(e), str(e)))
        finally:
            _world = current
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        error_type, message = value
        raise error_type(message, already_reported=not _world.is_main)
    return value


def all_gather(value: T) -> list[T]:
    """value from every rank, in rank order (just [value] for a single process)."""
    if not _world.distributed:
        return [value]
    out: list = [None] * _world.size
    dist.all_gather_object(out, value)
    return out


def check_same(value, message: str) -> None:
    """A ZooError on every rank unless every rank holds the same value."""
    if len(set(all_gather(value))) > 1:
        raise ZooError(message, already_reported=not _world.is_main)


def barrier() -> None:
    if _world.distributed:
        dist.barrier()


def my_batches(batches: Sequence[T]) -> list[T]:
    """Every world_size-th batch, from this rank's: the batches a single process runs, shared out."""
    return list(batches[_world.rank::_world.size])


def gather_chunks(chunks: list[tuple[list[int], torch.Tensor]]) -> list[tuple[list[int], torch.Tensor]]:
    """Every rank's (indices, rows) pairs, on every rank (CPU tensors)."""
    if not _world.distributed:
        return chunks
    return [c for part in all_gather([(i, t.cpu()) for i, t in chunks]) for c in part]


# ---------------------------------------------------------------- data-parallel training
@dataclass(frozen=True)
class Share:
    """This rank's part of one global batch."""

    indices: list[int]  # never empty: a rank with no image of the batch runs its first one at weight 0
    start: int  # row of indices[0] in the global batch
    size: int  # images in the global batch
    fraction: float  # this rank's part of the batch's loss weight (0 for a stand-in)
    images: int  # real images in the share (0 for a stand-in)


def shares(batches: Sequence[Sequence[int]], labels: Sequence[int], class_weights: Sequence[float] | None,
           rank: int, size: int) -> list[Share]:
    """Contiguous shares of each global batch, and each share's part of the batch's (weighted) mean loss."""
    def weight(idx) -> float:
        return float(sum(class_weights[labels[i]] for i in idx)) if class_weights is not None else float(len(idx))

    out = []
    for batch in batches:
        per_rank = -(-len(batch) // size)
        start = min(rank * per_rank, len(batch))
        mine = list(batch[start:start + per_rank])
        if mine:
            out.append(Share(mine, start, len(batch), weight(mine) / weight(batch), len(mine)))
        else:  # DDP needs every rank in every step: run the batch's first image, weighted 0
            out.append(Share([batch[0]], 0, len(batch), 0.0, 0))
    return out


class ShardedDropout(nn.Dropout):
    """nn.Dropout for one share of a global batch: the mask a single process draws for the whole
    batch (same random stream, same shape), of which this rank keeps its rows."""

    rows: tuple[int, int] | None = None  # (start, global batch size) of the current share

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.rows is None:
            return super().forward(x)
        start, size = self.rows
        noise = torch.empty((size, *x.shape[1:]), dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        return x * noise[start:start + len(x)].div_(1 - self.p)  # what ATen's dropout computes, row by row


class DataParallel:
    """A plan's model under DistributedDataParallel; frozen parts stay frozen (DDP skips them)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.dropouts = []
        for name, module in list(model.named_modules()):
            if type(module) is nn.Dropout:
                parent, _, attr = name.rpartition(".")
                sharded = ShardedDropout(module.p)
                model.get_submodule(parent).__setattr__(attr, sharded)
                self.dropouts.append(sharded)
        device_ids = [_world.device.index] if _world.device.type == "cuda" else None
        # Trainable BatchNorm layers see this rank's share; rank 0's running statistics are broadcast.
        self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def shares(self, batches: Sequence[Sequence[int]], labels: Sequence[int],
               class_weights: Sequence[float] | None) -> list[Share]:
        return shares(batches, labels, class_weights, _world.rank, _world.size)

    def begin(self, share: Share) -> None:
        for d in self.dropouts:
            d.rows = (share.start, share.size)

    @staticmethod
    def loss_scale(share: Share) -> float:
        return share.fraction * _world.size  # DDP divides the summed gradients by the world size

    @staticmethod
    def sum_over_ranks(*values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=_world.device)
        dist.all_reduce(t)
        return t.tolist()

    def sync_buffers(self) -> None:
        """Rank 0's BatchNorm statistics everywhere, so every rank validates (and ends with) the same model."""
        for b in self.model.buffers():
            dist.broadcast(b, src=0)
