"""Benchmark: training throughput of the two training stages.

Usage: python benchmarks/bench_training.py [--images 64] [--epochs 2] [--compile] [--quick]

CPU part: the real stages, ``train_cam.run`` (tiny backbone classifier, crop 224, batch 16) and
``train_aff.run`` (tiny AffinityNet, crop 224, batch 8), on the synthetic dataset, with DataLoader
``num_workers`` 0 vs 2 side by side (alternating). Images/s is measured on the last epoch (the
first one also pays one-off costs, among them starting the loader workers, which then persist
across epochs as in the stage). AffinityNet trains on CRF scores made from the ground truth (one
score map per label; speed does not depend on the labels).

CUDA part (runs when ``torch.cuda.is_available()``): step time of ResNet-38 training at crop 448,
batch 8 (classifier loss; random images, so data loading is excluded) in fp32, bf16 autocast
(the stages' ``amp``), and bf16 autocast + channels-last; ``--compile`` adds ``torch.compile``
rows. Without a CUDA device these rows print "skipped: no CUDA device"; ``--skip-cpu`` leaves
out the CPU part (on a GPU machine, see ``gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import dataclasses
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench, also when loaded by path

from affinitynet.algorithms.resize import resize_label, scaled_size, working_scale  # noqa: E402
from affinitynet.artifacts import WorkDir, save_crf_scores  # noqa: E402
from affinitynet.data.images import load_label_png  # noqa: E402
from affinitynet.data.synthetic import generate  # noqa: E402
from affinitynet.models import build_classifier, build_optimizer  # noqa: E402
from affinitynet.pipeline import demo_config  # noqa: E402
from affinitynet.stages import train_aff, train_cam  # noqa: E402
from _bench import cuda_suffix, machine, print_table_header, run_main, sync  # noqa: E402


def cpu_stage(stage: str, cfg, workers: int, epochs: int) -> dict:
    """Run one training stage from scratch; images/s of its last epoch."""
    wd = WorkDir(cfg.workdir)
    section = "train_cam" if stage == "train-cam" else "train_aff"
    sc = dataclasses.replace(getattr(cfg, section), num_workers=workers, epochs=epochs)
    cfg = dataclasses.replace(cfg, **{section: sc})
    shutil.rmtree(wd.training(section).root, ignore_errors=True)  # from scratch (its record stays: the same settings)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = (train_cam if stage == "train-cam" else train_aff).run(cfg)
    last = result["history"][-1]
    steps = result["steps"] // epochs
    return {"ips": steps * sc.batch_size / last["seconds"], "epoch_s": last["seconds"],
            "steps": steps, "batch": sc.batch_size}


def cpu_rows(n_images: int, epochs: int, rounds: int, tmp: Path, crop: int = 224,
             batch_cam: int = 16, batch_aff: int = 8) -> list[dict]:
    cfg = demo_config(tmp / "work")
    generate(cfg.dataset.root, n_train=n_images, n_val=0, seed=0)
    # AffinityNet's input: CRF scores of both alphas, here the ground truth as one-hot scores at
    # the working size, in the stage's score folder
    wd = WorkDir(cfg.workdir)
    for png in (Path(cfg.dataset.root) / "SegmentationClass").glob("*.png"):
        gt = load_label_png(png)
        gt = resize_label(gt, scaled_size(gt.shape, working_scale(cfg.dataset.long_side, gt.shape)))
        keys = np.array([k for k in range(1, 255) if (gt == k).any()], np.int64) - 1
        scores = np.stack([gt == 0, *(gt == k + 1 for k in keys)]).astype(np.float32)
        save_crf_scores(wd.crf_file(png.stem), keys, scores, scores)
    cfg = dataclasses.replace(cfg, train_cam=dataclasses.replace(cfg.train_cam, crop=crop, batch_size=batch_cam),
                              train_aff=dataclasses.replace(cfg.train_aff, crop=crop, batch_size=batch_aff,
                                                            init_from_classifier=False))
    rows = []
    for stage in ("train-cam", "train-aff"):
        best: dict[int, dict] = {}
        for r in range(rounds):
            for workers in ((0, 2) if r % 2 == 0 else (2, 0)):
                res = cpu_stage(stage, cfg, workers, epochs)
                if workers not in best or res["ips"] > best[workers]["ips"]:
                    best[workers] = res
        for workers in (0, 2):
            rows.append({"stage": stage, "workers": workers, **best[workers],
                         "speedup": best[workers]["ips"] / best[0]["ips"]})
    return rows


def step_rows(steps: int, warmup: int, use_compile: bool, device: torch.device, backbone: str = "resnet38",
              batch: int = 8, crop: int = 448) -> list[dict]:
    """Step time of classifier training on random data, per variant (fp32, bf16 autocast,
    + channels-last, + torch.compile): the GPU rows; any device runs them (the smoke test uses
    the CPU with the tiny backbone)."""
    variants = [("fp32", False, False, False), ("bf16 autocast", True, False, False),
                ("bf16 autocast + channels-last", True, True, False)]
    if use_compile:
        variants += [("bf16 autocast + channels-last + torch.compile", True, True, True)]
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, crop, crop, generator=gen).to(device)
    y = (torch.rand(batch, 20, generator=gen) < 0.15).float().to(device)
    cuda = device.type == "cuda"
    rows = []
    for name, amp, channels_last, compiled in variants:
        torch.manual_seed(0)
        net = build_classifier(backbone, 20).to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(net, lr=0.01, weight_decay=5e-4, max_step=steps + warmup, momentum=5e-4)
        model = torch.compile(net) if compiled else net
        inp = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        times = []
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        for i in range(warmup + steps):
            sync(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.multilabel_soft_margin_loss(model(inp).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        rows.append({"variant": name, "step_s": float(np.median(times)), "batch": batch,
                     "peak_gb": torch.cuda.max_memory_allocated(device) / 1e9 if cuda else float("nan")})
        del net, model, optimizer
        if cuda:
            torch.cuda.empty_cache()
    for r in rows:
        r["speedup"] = rows[0]["step_s"] / r["step_s"]
    return rows


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64, help="synthetic training images (CPU part)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per CPU run (the last is timed)")
    parser.add_argument("--rounds", type=int, default=1, help="CPU runs per variant, best kept")
    parser.add_argument("--steps", type=int, default=20, help="timed CUDA steps (median)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed CUDA steps")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on CUDA")
    parser.add_argument("--skip-cpu", action="store_true", help="only the CUDA rows (on a GPU machine)")
    parser.add_argument("--crop", type=int, default=224, help="CPU part's crop (multiple of 8)")
    parser.add_argument("--batch-cam", type=int, default=16)
    parser.add_argument("--batch-aff", type=int, default=8)
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: 8 images, crop 96, batch 4, 1 epoch (numbers meaningless)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.rounds, args.steps, args.warmup = 8, 1, 1, 3, 1
        args.crop, args.batch_cam, args.batch_aff = 96, 4, 4
    print(f"Machine: {machine(cuda_suffix())}\n")
    if not args.skip_cpu:
        print(f"CPU: tiny backbone, real training stages on {args.images} synthetic images "
              f"(200-320 px, long side resized to 200-320, crop {args.crop}), {args.epochs} epoch(s), "
              f"last epoch timed, best of {args.rounds} round(s)\n")
        print_table_header("stage", "batch", "DataLoader workers", "steps / epoch", "epoch time",
                           "images/s", "speedup vs 0 workers", align="lrrrrrr")
        with tempfile.TemporaryDirectory() as tmp:
            for r in cpu_rows(args.images, args.epochs, args.rounds, Path(tmp), args.crop,
                              args.batch_cam, args.batch_aff):
                print(f"| {r['stage']} (tiny) | {r['batch']} | {r['workers']} | {r['steps']} | "
                      f"{r['epoch_s']:.2f} s | {r['ips']:.1f} | {r['speedup']:.2f}x |", flush=True)
        print(f"\nLoad average after the CPU part: {os.getloadavg()[0]:.2f} (on a 2-core machine the "
              f"loader workers compete with the training step for the same cores).\n")
    print("CUDA: ResNet-38 classifier training step, crop 448, batch 8, random data\n")
    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return 0
    print_step_rows(step_rows(args.steps, args.warmup, args.compile, torch.device("cuda")))
    return 0


def print_step_rows(rows: list[dict]) -> None:
    print_table_header("variant", "step time (median)", "images/s", "speedup vs fp32", "peak GPU memory",
                       align="lrrrr")
    for r in rows:
        print(f"| {r['variant']} | {r['step_s'] * 1000:.0f} ms | {r['batch'] / r['step_s']:.1f} | "
              f"{r['speedup']:.2f}x | {r['peak_gb']:.1f} GB |", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; ``--quick`` runs single-threaded (see ``_bench.run_main``)."""
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
