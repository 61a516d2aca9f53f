"""The one training loop of the three training stages (``fit``), a plain loop: seeding, a
sampler with per-image augmentation seeds, DDP, AMP / channels-last, checkpoints with RNG
states for exact resume, a finite-loss guard and the per-step log. Each stage builds the
network, datasets and criterion and hands them over."""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from affinitynet import artifacts, distributed
from affinitynet.artifacts import TrainingFolder
from affinitynet.common import image_to
from affinitynet.config import TrainingConfig, to_dict
from affinitynet.errors import AffinityNetError, InputError
from affinitynet.models.optim import build_optimizer

#: a training stage's loss: (network, batch on the device) -> (loss, extra floats for the log)
Criterion = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]


class TrainingDiverged(AffinityNetError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states as tensors/lists only, so a checkpoint loads with weights_only=True."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled (no loss scaling needed); a no-op on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_finite(loss: torch.Tensor, step: int, epoch: int, last_checkpoint: str) -> None:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"loss became {value} at step {step} (epoch {epoch}); training stopped, "
            f"the last good checkpoint is {last_checkpoint or 'none (no epoch finished)'}"
        )


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of the global RNG (dropout) for one epoch on one rank; depends only on (seed, epoch, rank)."""
    return seed * 100_003 + epoch + 7_919 * rank


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one image's augmentation in one epoch: a function of (seed, epoch, index) only,
    so the augmented images do not depend on the number of loader workers or ranks."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63)


class EpochSampler(DistributedSampler):
    """Yields ``(index, augmentation seed)`` for the datasets of the training stages.

    A DistributedSampler, also for one process (``num_replicas=1``): the epoch's permutation is
    drawn from ``seed + epoch`` and is the same on every rank, rank r takes every world-size-th
    entry. So a global batch holds the same images, with the same augmentation, whatever the
    number of ranks; and persistent loader workers need no reseeding between epochs.
    """

    def __iter__(self):
        for index in super().__iter__():
            yield index, sample_seed(self.seed, self.epoch, index)


def _loader(dataset, batch_size: int, seed: int, num_workers: int, device: torch.device, dist_info,
            drop_last: bool) -> tuple[DataLoader, EpochSampler]:
    """One DataLoader for the whole run; call ``sampler.set_epoch(e)`` before each epoch. Its
    order and augmentation depend only on (seed, epoch), so a resumed run sees exactly the
    batches an uninterrupted one would. Workers persist across epochs; memory is pinned on CUDA."""
    sampler = EpochSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                           shuffle=True, seed=seed, drop_last=drop_last)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=drop_last,
                        persistent_workers=num_workers > 0)
    return loader, sampler


def fit(model: torch.nn.Module, criterion: Criterion, train_set: Dataset, val_set: Dataset | None,
        settings: TrainingConfig, out: TrainingFolder, device: torch.device, *, resume: bool,
        config: Any, desc: str, channels_last: bool | None = None,
        meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model`` with ``criterion`` on ``train_set`` for ``settings.epochs`` epochs.

    ``criterion(model, batch) -> (loss, extra metrics)`` gets batches already on ``device``
    (images NHWC when the network is: ``channels_last``, by default ``settings.channels_last`` on
    CUDA, where it is faster; on the CPU it is not). ``train_set`` is indexed with
    ``(index, augmentation seed)`` pairs (see ``EpochSampler``), ``val_set`` with plain indices.
    SGD with the poly schedule over the model's four parameter groups; the global
    ``settings.batch_size`` is split over the ranks and the schedule counts global steps.
    Rank 0 writes ``out.checkpoint`` every epoch (model, optimizer incl. schedule step, epoch, RNG
    states, ``config``), ``out.final`` at the end and ``out.log`` throughout; ``resume``
    continues from ``out.checkpoint``. With ``meta`` (names, numbers, lists only), ``out.final``
    is {"model": weights, "meta": meta}, so that it describes itself (e.g. for ``predict``);
    otherwise the plain weights, as the original's released files. Returns {"final", "steps",
    "history", "seconds"}.
    """
    t0 = time.time()
    dist_info = distributed.current()
    if dist_info.is_main:
        out.root.mkdir(parents=True, exist_ok=True)
        artifacts.remove_stale_tmp(out.root)
    if len(train_set) == 0:
        raise AffinityNetError(f"{desc}: the training split has no usable image")
    per_rank = max(1, settings.batch_size // dist_info.world_size)
    if dist_info.is_main and per_rank * dist_info.world_size != settings.batch_size:
        print(f"{desc}: batch size {settings.batch_size} is global; {dist_info.world_size} ranks take "
              f"{per_rank} images each, i.e. {per_rank * dist_info.world_size} per step")
    drop_last = len(train_set) >= per_rank * dist_info.world_size
    loader, sampler = _loader(train_set, per_rank, settings.seed, settings.num_workers, device, dist_info,
                              drop_last)
    max_step = max(1, len(loader) * settings.epochs)
    seed_everything(settings.seed)
    if channels_last is None:
        channels_last = settings.channels_last and device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, lr=settings.lr, weight_decay=settings.weight_decay, max_step=max_step,
                                momentum=settings.momentum)
    start_epoch, step = 0, 0
    last_good = ""  # the checkpoint a divergence falls back to: only one this run wrote or resumed
    if resume and out.checkpoint.exists():
        start_epoch, step = _resume(out.checkpoint, model, optimizer, desc)
        last_good = str(out.checkpoint)
        if dist_info.is_main:
            _truncate_log(out.log, step)
    elif resume and dist_info.is_main:
        print(f"{desc}: no checkpoint in {out.root}, starting from scratch")
    if not resume and dist_info.is_main and out.log.exists():
        out.log.unlink()
    wrapped = distributed.wrap_model(model, device, sync_bn=True)
    if settings.compile:
        wrapped = torch.compile(wrapped)

    def to_device(batch: Any) -> list[Any]:
        image, *rest = batch
        return [image_to(image, device, channels_last),
                *(t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t for t in rest)]

    history: list[dict[str, Any]] = []
    bar = None
    for epoch in range(start_epoch, settings.epochs):
        # dropout masks come from the global RNG (augmentation has its own per-image seeds)
        torch.manual_seed(_epoch_seed(settings.seed, epoch, dist_info.rank))
        sampler.set_epoch(epoch)
        wrapped.train()
        total, count, t_epoch = 0.0, 0, time.time()
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{settings.epochs}", disable=not dist_info.is_main,
                   dynamic_ncols=True, leave=False)
        for batch in bar:
            with autocast(device, settings.amp):
                loss, extra = criterion(wrapped, to_device(batch))
            # the mean over ranks is the loss of the global batch; every rank sees the same value,
            # so a diverged run stops on all ranks together instead of hanging in the all-reduce
            loss_global = distributed.all_reduce_mean(loss.detach().float())
            check_finite(loss_global, step, epoch, last_good)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            value = float(loss_global)
            total, count = total + value, count + 1
            lr_now = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr_now:.2e}")
            if dist_info.is_main:
                artifacts.append_jsonl(out.log, {"kind": "step", "epoch": epoch, "step": step,
                                                 "loss": value, "lr": lr_now, **extra})
        record = {"kind": "epoch", "epoch": epoch, "step": step, "train_loss": total / max(count, 1),
                  "seconds": time.time() - t_epoch}
        if val_set is not None and len(val_set):
            # the bare network: ranks get unequal shares, and DDP's forward would wait for all ranks
            record["val_loss"] = evaluate_loss(model, val_set, criterion, to_device, per_rank, device,
                                               settings.amp)
        history.append(record)
        if dist_info.is_main:
            artifacts.append_jsonl(out.log, record)
            artifacts.save_checkpoint(out.checkpoint, {
                "version": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1, "step": step, "rng": rng_state(), "config": to_dict(config)})
            last_good = str(out.checkpoint)
            msg = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k.endswith("loss"))
            print(f"{desc}: epoch {epoch + 1}/{settings.epochs} {msg} ({record['seconds']:.1f}s)")
        distributed.barrier()
    del loader, bar  # the last references to the persistent workers: stops them
    if dist_info.is_main:
        weights = {k: v.contiguous() for k, v in model.state_dict().items()}
        artifacts.save_checkpoint(out.final, {"model": weights, "meta": meta} if meta else weights)
    distributed.barrier()
    return {"final": str(out.final), "steps": step, "history": history, "seconds": time.time() - t0}


def _resume(ckpt_path, net, optimizer, desc: str) -> tuple[int, int]:
    """Load model, optimizer and RNG states from ``ckpt_path`` -> (next epoch, global step).
    A checkpoint of another network or not written by ``fit`` is an InputError naming it."""
    from affinitynet.models import load_state_dict_strict

    state = artifacts.load_checkpoint(ckpt_path)
    try:
        load_state_dict_strict(net, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        return int(state["epoch"]), int(state["step"])
    except InputError as exc:
        raise InputError(f"{ckpt_path}: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{ckpt_path}: not a resumable {desc} checkpoint ({type(exc).__name__}: "
                         f"{first})") from None


def _truncate_log(log_path, step: int) -> None:
    """Drop log records after the checkpoint's ``step`` (a killed run logged steps that the
    resumed run repeats), so the log lists every step once."""
    if not log_path.exists():
        return
    keep = [r for r in artifacts.read_jsonl(log_path) if int(r.get("step", 0)) <= step]
    artifacts.write_bytes(log_path, "".join(json.dumps(r) + "\n" for r in keep).encode())


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, dataset: Dataset, criterion: Criterion,
                  to_device: Callable[[Any], Any], batch_size: int, device: torch.device, amp: bool) -> float:
    """Mean loss over ``dataset`` in eval mode, over all ranks.

    Each rank takes every world_size-th image (no padding duplicates, unlike DistributedSampler),
    so the sums all-reduced over ranks give the single-process mean. Pass the bare network, not
    the DDP wrapper: the shares may differ by one batch, and DDP's forward is collective.
    """
    mine = Subset(dataset, distributed.shard(range(len(dataset))))
    loader = DataLoader(mine, batch_size=batch_size, shuffle=False, num_workers=0,
                        pin_memory=device.type == "cuda")
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for batch in loader:
        with autocast(device, amp):
            loss, _ = criterion(model, to_device(batch))
        total += torch.tensor([float(loss) * len(batch[0]), len(batch[0])], dtype=torch.float64)
    total = distributed.all_reduce_sum(total.to(device) if device.type == "cuda" else total).cpu()
    model.train()
    return float(total[0] / max(total[1], 1))
