"""The one training loop of the training stages, a plain loop: ``fit`` seeds, builds the loader
(a sampler with per-image augmentation seeds) and the optimizer, wraps the network for DDP and
runs ``train_one_epoch`` (AMP / channels-last, a finite-loss guard, the per-step log) and
``evaluate`` per epoch; ``Checkpointer`` writes checkpoints with RNG states for exact resume.
Each stage builds the network, datasets and criterion and hands them over, as torchvision's
reference scripts do."""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from affinitynet import artifacts, distributed, records
from affinitynet.artifacts import TrainingFolder, WorkDir
from affinitynet.config import RunConfig, TrainingConfig, to_dict
from affinitynet.errors import AffinityNetError, InputError
from affinitynet.inference import load_backbone_weights
from affinitynet.models import BoundaryDisplacementNet, input_to
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


def _loader(dataset: Dataset, settings: TrainingConfig, device: torch.device, desc: str
            ) -> tuple[DataLoader, EpochSampler]:
    """One DataLoader for the whole run; call ``sampler.set_epoch(e)`` before each epoch. The
    global ``settings.batch_size`` is split over the ranks. Its order and augmentation depend
    only on (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.
    Workers persist across epochs; memory is pinned on CUDA."""
    dist_info = distributed.current()
    per_rank = max(1, settings.batch_size // dist_info.world_size)
    if dist_info.is_main and per_rank * dist_info.world_size != settings.batch_size:
        print(f"{desc}: batch size {settings.batch_size} is global; {dist_info.world_size} ranks take "
              f"{per_rank} images each, i.e. {per_rank * dist_info.world_size} per step")
    drop_last = len(dataset) >= per_rank * dist_info.world_size
    sampler = EpochSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                           shuffle=True, seed=settings.seed, drop_last=drop_last)
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=settings.num_workers,
                        pin_memory=device.type == "cuda", drop_last=drop_last,
                        persistent_workers=settings.num_workers > 0)
    return loader, sampler


class Checkpointer:
    """The files of a training stage (``out``): ``checkpoint.pt`` every epoch (model, optimizer
    with its schedule step, epoch, RNG states, ``config``), ``final.pth`` at the end and the
    per-step ``log.jsonl``, all written by rank 0. ``last_good`` is the checkpoint a divergence
    falls back to: only one this run wrote or resumed from, never a stale file."""

    def __init__(self, out: TrainingFolder, config: Any, desc: str) -> None:
        self.out, self.config, self.desc = out, config, desc
        self.main = distributed.current().is_main
        self.last_good = ""
        if self.main:
            out.root.mkdir(parents=True, exist_ok=True)
            artifacts.remove_stale_tmp(out.root)

    def start(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, resume: bool) -> tuple[int, int]:
        """(first epoch, global step): from ``checkpoint.pt`` when resuming and it exists (the log
        loses what the killed run logged after it), else from scratch (a fresh log)."""
        if resume and self.out.checkpoint.exists():
            start_epoch, step = _resume(self.out.checkpoint, model, optimizer, self.desc)
            self.last_good = str(self.out.checkpoint)
            if self.main:
                _truncate_log(self.out.log, step)
            return start_epoch, step
        if resume and self.main:
            print(f"{self.desc}: no checkpoint in {self.out.root}, starting from scratch")
        if not resume and self.main and self.out.log.exists():
            self.out.log.unlink()
        return 0, 0

    def log(self, record: dict[str, Any]) -> None:
        if self.main:
            artifacts.append_jsonl(self.out.log, record)

    def print(self, line: str) -> None:
        if self.main:
            print(line)

    def save_epoch(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int, step: int) -> None:
        if self.main:
            artifacts.save_checkpoint(self.out.checkpoint, {
                "version": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1, "step": step, "rng": rng_state(), "config": to_dict(self.config)})
            self.last_good = str(self.out.checkpoint)

    def save_final(self, model: torch.nn.Module, meta: dict[str, Any] | None) -> None:
        """The trained weights: {"model", "meta"} with ``meta``, else the plain state dict (as
        the original's released files)."""
        if self.main:
            weights = {k: v.contiguous() for k, v in model.state_dict().items()}
            artifacts.save_checkpoint(self.out.final, {"model": weights, "meta": meta} if meta else weights)


@dataclass(frozen=True)
class StepContext:
    """What every training step needs besides the batch."""

    criterion: Criterion
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp: bool
    channels_last: bool
    checkpoints: Checkpointer

    def to_device(self, batch: Any) -> list[Any]:
        image, *rest = batch
        return [input_to(image, self.device, self.channels_last),
                *(t.to(self.device, non_blocking=True) if isinstance(t, torch.Tensor) else t for t in rest)]


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, ctx: StepContext, epoch: int, step: int,
                    desc: str) -> tuple[int, dict[str, Any]]:
    """One pass over ``loader`` -> (global step after it, the epoch's record). Every step is
    logged; a NaN or infinite loss stops training before it changes the weights."""
    model.train()
    total, count, t_epoch = 0.0, 0, time.time()
    bar = tqdm(loader, desc=desc, disable=not distributed.current().is_main, dynamic_ncols=True, leave=False)
    for batch in bar:
        with autocast(ctx.device, ctx.amp):
            loss, extra = ctx.criterion(model, ctx.to_device(batch))
        # the mean over ranks is the loss of the global batch; every rank sees the same value,
        # so a diverged run stops on all ranks together instead of hanging in the all-reduce
        loss_global = distributed.all_reduce_mean(loss.detach().float())
        check_finite(loss_global, step, epoch, ctx.checkpoints.last_good)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ctx.optimizer.step()
        step += 1
        value = float(loss_global)
        total, count = total + value, count + 1
        lr_now = ctx.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr_now:.2e}")
        ctx.checkpoints.log({"kind": "step", "epoch": epoch, "step": step, "loss": value, "lr": lr_now, **extra})
    return step, {"kind": "epoch", "epoch": epoch, "step": step, "train_loss": total / max(count, 1),
                  "seconds": time.time() - t_epoch}


def fit(model: torch.nn.Module, criterion: Criterion, train_set: Dataset, val_set: Dataset | None,
        settings: TrainingConfig, out: TrainingFolder, device: torch.device, *, resume: bool,
        config: Any, desc: str, channels_last: bool | None = None, meta: dict[str, Any] | None = None,
        finish: Callable[[torch.nn.Module], None] | None = None) -> dict[str, Any]:
    """Train ``model`` with ``criterion`` on ``train_set`` for ``settings.epochs`` epochs.
    ``criterion(model, batch) -> (loss, extra metrics)`` gets batches on ``device`` (NHWC with
    ``channels_last``, default ``settings.channels_last`` on CUDA). ``train_set`` is indexed with
    ``(index, augmentation seed)`` pairs (``EpochSampler``), ``val_set`` with plain indices. SGD
    with the poly schedule over the model's parameter groups; the global batch is split over the
    ranks and the schedule counts global steps. ``Checkpointer`` writes ``out`` (``resume``
    continues from its checkpoint); with ``meta`` (names, numbers, lists only) ``out.final``
    describes itself (e.g. for ``predict``); ``finish(model)`` runs after the last epoch, before
    ``out.final`` is written. Returns {"final", "steps", "history", "seconds"}."""
    t0 = time.time()
    checkpoints = Checkpointer(out, config, desc)
    if len(train_set) == 0:
        raise AffinityNetError(f"{desc}: the training split has no usable image")
    loader, sampler = _loader(train_set, settings, device, desc)
    seed_everything(settings.seed)
    channels_last = settings.channels_last and device.type == "cuda" if channels_last is None else channels_last
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = build_optimizer(model, lr=settings.lr, weight_decay=settings.weight_decay,
                                max_step=max(1, len(loader) * settings.epochs), momentum=settings.momentum)
    start_epoch, step = checkpoints.start(model, optimizer, resume)
    wrapped = distributed.wrap_model(model, device, sync_bn=True)
    if settings.compile:
        wrapped = torch.compile(wrapped)
    ctx = StepContext(criterion, optimizer, device, settings.amp, channels_last, checkpoints)
    history: list[dict[str, Any]] = []
    for epoch in range(start_epoch, settings.epochs):
        # dropout masks come from the global RNG (augmentation has its own per-image seeds)
        torch.manual_seed(_epoch_seed(settings.seed, epoch, distributed.current().rank))
        sampler.set_epoch(epoch)
        step, record = train_one_epoch(wrapped, loader, ctx, epoch, step, f"{desc} {epoch + 1}/{settings.epochs}")
        if val_set is not None and len(val_set):
            # the bare network: ranks get unequal shares, and DDP's forward would wait for all ranks
            record["val_loss"] = evaluate(model, val_set, ctx, loader.batch_size)
        history.append(record)
        checkpoints.log(record)
        checkpoints.save_epoch(model, optimizer, epoch, step)
        checkpoints.print(f"{desc}: epoch {epoch + 1}/{settings.epochs} "
                          f"{', '.join(f'{k} {v:.4f}' for k, v in record.items() if k.endswith('loss'))} "
                          f"({record['seconds']:.1f}s)")
        distributed.barrier()
    del loader  # the last reference to the persistent workers: stops them
    if finish is not None:
        finish(model)  # before final.pth: a network is final only with it (IRN's mean shift)
    checkpoints.save_final(model, meta)
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
def evaluate(model: torch.nn.Module, dataset: Dataset, ctx: StepContext, batch_size: int) -> float:
    """Mean loss over ``dataset`` in eval mode, over all ranks.

    Each rank takes every world_size-th image (no padding duplicates, unlike DistributedSampler),
    so the sums all-reduced over ranks give the single-process mean. Pass the bare network, not
    the DDP wrapper: the shares may differ by one batch, and DDP's forward is collective.
    """
    mine = Subset(dataset, distributed.shard(range(len(dataset))))
    loader = DataLoader(mine, batch_size=batch_size, shuffle=False, num_workers=0,
                        pin_memory=ctx.device.type == "cuda")
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for batch in loader:
        with autocast(ctx.device, ctx.amp):
            loss, _ = ctx.criterion(model, ctx.to_device(batch))
        total += torch.tensor([float(loss) * len(batch[0]), len(batch[0])], dtype=torch.float64)
    total = distributed.all_reduce_sum(total.to(ctx.device) if ctx.device.type == "cuda" else total).cpu()
    model.train()
    return float(total[0] / max(total[1], 1))


def start(cfg: RunConfig, stage: str) -> tuple[records.Start, dict[str, Any] | None]:
    """A training stage's comparison with its record (``records.start``): the decision, and
    the stage's result when its network is there already (trained with these settings, or
    given) and nothing is to be trained."""
    decision = records.start(cfg, stage)
    final = WorkDir(cfg.workdir).training(stage).final
    if decision.status == "given" or (decision.status == "continued" and final.exists()):
        return decision, {"final": str(final), **records.outcome(decision, stage, 0)}
    return decision, None


def initial_weights(net: torch.nn.Module, cfg: RunConfig, section: TrainingConfig) -> torch.nn.Module:
    """Start ``net``'s backbone from ``section.weights`` when given, else (with
    ``init_from_classifier``, networks on the run's backbones only) from the trained classifier
    of this run when it exists and has the same backbone; otherwise leave the fresh
    initialisation."""
    target = net.trunk() if isinstance(net, BoundaryDisplacementNet) else net
    if section.weights:
        load_backbone_weights(target, section.weights)
    elif getattr(section, "init_from_classifier", False) and getattr(section, "model", "largefov") == "largefov":
        final = artifacts.WorkDir(cfg.workdir).classifier.final
        if final.exists() and cfg.backbone_of(section) == cfg.train_cam.backbone:
            load_backbone_weights(target, final)
    return net
