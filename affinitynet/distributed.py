"""All torch.distributed code of the project.

Training stages run unchanged under ``torchrun``: ``setup()`` reads the environment that
torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK), initialises the process group (NCCL on CUDA,
gloo on CPU), and returns where this process stands. Per-image stages call ``shard()`` to take
their share of the image list; only rank 0 writes logs, checkpoints and summaries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> this rank's CUDA device when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def setup(device: str = "auto") -> tuple[Dist, torch.device]:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        # rank 0 alone evaluates while the others wait at a barrier: allow long evaluations
        minutes = float(os.environ.get("AFFINITYNET_DIST_TIMEOUT_MIN", "60"))
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=minutes))
    return Dist(rank, world, local), dev


def current() -> Dist:
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Dist()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard(items: Sequence[T], d: Dist | None = None) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th item from ``rank`` on, so every
    item is taken exactly once across ranks and the shares differ in length by at most one."""
    d = d or current()
    return list(items[d.rank :: d.world_size])


def local_world_size() -> int:
    """Processes of this job on this node (torchrun's LOCAL_WORLD_SIZE; 1 outside torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def trains_batchnorm(model: torch.nn.Module) -> bool:
    """Whether ``model`` updates batch-norm statistics while training (the tiny backbone does;
    ResNet-38 / VGG-16 / ResNet-50 keep BN in eval mode, as PSA and IRN)."""
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return has_bn and not getattr(model, "freeze_batchnorm", False)


def wrap_model(model: torch.nn.Module, device: torch.device, sync_bn: bool = True) -> torch.nn.Module:
    """DistributedDataParallel when running distributed; else ``model`` itself.

    BN layers become SyncBatchNorm (statistics over the global batch) only where BN is trained
    and the device is CUDA: torch's SyncBatchNorm cannot train on CPU, so gloo/CPU runs keep
    per-rank BN statistics (DDP broadcasts rank 0's running statistics every step). Frozen BN
    is left alone, which also keeps ``Backbone.train()`` holding it in eval mode.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    if sync_bn and device.type == "cuda" and trains_batchnorm(model):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# what the transports report when the other end of a collective went away
_PEER_GONE = ("closed by peer", "reset by peer", "Broken pipe", "Connection refused")


def peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is this rank losing another rank in a collective (that rank failed and
    printed its own error), rather than a failure of its own."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in _PEER_GONE)
