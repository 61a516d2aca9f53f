"""Small pieces shared by the training stages: seeding, RNG state for exact resume, autocast,
finite-loss guard, and the per-step metrics log. Each stage keeps its own plain loop."""

from __future__ import annotations

import contextlib
import time
import math
import random
from typing import Any

import numpy as np
import torch

from affinitynet.errors import AffinityNetError


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


def load_backbone_weights(net: torch.nn.Module, path: str) -> list[str]:
    """Initialise the backbone of ``net`` from a weights file (ImageNet .params / .caffemodel /
    .pth, or a trained sibling network); heads keep their fresh initialisation. Returns the
    file's keys that were not used."""
    from affinitynet.models import load_backbone_state_dict
    from affinitynet.weights import load_weights

    return load_backbone_state_dict(net, load_weights(path))


def _loader(dataset, batch_size: int, shuffle: bool, seed: int, epoch: int, num_workers: int,
            device: torch.device, dist_info, drop_last: bool) -> torch.utils.data.DataLoader:
    """A DataLoader whose order and augmentation depend only on (seed, epoch), so a resumed run
    sees exactly the batches an uninterrupted one would."""
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

    g = torch.Generator()
    g.manual_seed(seed * 100_003 + epoch)
    if dist_info.enabled:
        sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=g) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=device.type == "cuda", drop_last=drop_last, generator=g,
                      persistent_workers=False)


def fit(*, net, train_set, val_set, loss_fn, out_dir, device, dist_info, batch_size: int, epochs: int,
        lr: float, weight_decay: float, momentum: float, num_workers: int, amp: bool, compile: bool,
        seed: int, resume: bool, config, desc: str) -> dict[str, Any]:
    """The training loop shared by train-cam and train-aff.

    ``loss_fn(model, batch) -> (loss, extra_metrics)``. The global ``batch_size`` is split over
    the ranks; the poly schedule counts global steps. Rank 0 writes ``out_dir/checkpoint.pt``
    after every epoch (model, optimizer incl. schedule step, epoch, RNG states, config),
    ``out_dir/final.pth`` at the end and ``out_dir/log.jsonl`` throughout.
    """
    from pathlib import Path

    from tqdm import tqdm

    from affinitynet import artifacts, distributed
    from affinitynet.config import to_dict
    from affinitynet.models.optim import build_optimizer

    out_dir = Path(out_dir)
    ckpt_path, final_path, log_path = out_dir / "checkpoint.pt", out_dir / "final.pth", out_dir / "log.jsonl"
    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        artifacts.remove_stale_tmp(out_dir)
    if len(train_set) == 0:
        raise AffinityNetError(f"{desc}: the training split has no usable image")
    per_rank = max(1, batch_size // dist_info.world_size)
    drop_last = len(train_set) >= per_rank * dist_info.world_size
    steps_per_epoch = len(_loader(train_set, per_rank, True, seed, 0, 0, torch.device("cpu"), dist_info, drop_last))
    max_step = max(1, steps_per_epoch * epochs)
    seed_everything(seed)
    net.to(device)
    optimizer = build_optimizer(net, lr=lr, weight_decay=weight_decay, max_step=max_step,
                                momentum=None if momentum < 0 else momentum)
    start_epoch, step = 0, 0
    if resume and ckpt_path.exists():
        state = artifacts.load_checkpoint(ckpt_path)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        set_rng_state(state["rng"])
    elif resume and dist_info.is_main:
        print(f"{desc}: no checkpoint in {out_dir}, starting from scratch")
    if not resume and dist_info.is_main and log_path.exists():
        log_path.unlink()
    model = distributed.wrap_model(net, device, sync_bn=True)
    if compile:
        model = torch.compile(model)
    history: list[dict[str, Any]] = []
    for epoch in range(start_epoch, epochs):
        torch.manual_seed(seed * 100_003 + epoch)  # augmentation in the main process (num_workers=0)
        loader = _loader(train_set, per_rank, True, seed, epoch, num_workers, device, dist_info, drop_last)
        model.train()
        total, count, t_epoch = 0.0, 0, time.time()
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", disable=not dist_info.is_main,
                   dynamic_ncols=True, leave=False)
        for batch in bar:
            with autocast(device, amp):
                loss, extra = loss_fn(model, batch)
            check_finite(loss, step, epoch, str(ckpt_path) if ckpt_path.exists() else "")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            value = float(loss.detach())
            total, count = total + value, count + 1
            lr_now = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr_now:.2e}")
            if dist_info.is_main:
                artifacts.append_jsonl(log_path, {"kind": "step", "epoch": epoch, "step": step,
                                                  "loss": value, "lr": lr_now, **extra})
        record = {"kind": "epoch", "epoch": epoch, "step": step, "train_loss": total / max(count, 1),
                  "seconds": time.time() - t_epoch}
        if val_set is not None and len(val_set):
            record["val_loss"] = evaluate_loss(model, val_set, loss_fn, per_rank, device, amp, dist_info)
        history.append(record)
        if dist_info.is_main:
            artifacts.append_jsonl(log_path, record)
            artifacts.save_checkpoint(ckpt_path, {
                "version": 1, "model": distributed.unwrap(net).state_dict(),
                "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": step,
                "rng": rng_state(), "config": to_dict(config)})
            msg = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k.endswith("loss"))
            print(f"{desc}: epoch {epoch + 1}/{epochs} {msg} ({record['seconds']:.1f}s)")
        distributed.barrier()
    if dist_info.is_main:
        artifacts.save_checkpoint(final_path, distributed.unwrap(net).state_dict())
    distributed.barrier()
    return {"final": str(final_path), "steps": step, "history": history}


@torch.no_grad()
def evaluate_loss(model, dataset, loss_fn, batch_size: int, device, amp: bool, dist_info) -> float:
    """Mean loss over ``dataset`` in eval mode (averaged over ranks)."""
    from affinitynet import distributed

    loader = _loader(dataset, batch_size, False, 0, 0, 0, device, dist_info, drop_last=False)
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for batch in loader:
        with autocast(device, amp):
            loss, _ = loss_fn(model, batch)
        total += torch.tensor([float(loss) * len(batch[0]), len(batch[0])], dtype=torch.float64)
    total = distributed.all_reduce_sum(total.to(device) if device.type == "cuda" else total).cpu()
    model.train()
    return float(total[0] / max(total[1], 1))
