"""Benchmark: multi-scale + flip CAM inference, one pass at a time vs make-cam's form.

Usage: python benchmarks/bench_cam_inference.py [--images 2] [--size 500x375]
                                                [--scales 1.0,0.5,1.5,2.0] [--bf16-cpu] [--quick]

ResNet-38 classifier (20 classes, random weights: speed does not depend on them) on random
VOC-size images, the paper's 4 scales x 2 flips (PSA infer_cls.py). Variants, run on the same
images in the same process, alternating per image:

- ``one pass at a time``: 8 separate forward passes per image (each scale, then its flip) under
  ``torch.no_grad``, contiguous NCHW, summed in PSA's order — the original's form;
- ``make-cam``: ``affinitynet.algorithms.cam.multiscale_cam`` with the network call of
  ``affinitynet.inference.prepare(...).cam``, exactly what the stage runs on this device:
  ``torch.inference_mode``, channels-last network and input, and on CUDA the image and its flip
  as one batch of 2 (``batch_flip_on``; on the CPU two passes of 1 are faster);
- CPU only, for comparison: the flip pair batched, in NCHW and in channels-last;
- ``make-cam bf16 autocast``: on CUDA always; on the CPU with ``--bf16-cpu`` (not what make-cam
  does on the CPU).

Agreement: max |a - b| / max |b| of the fused, normalised CAMs against the one-pass-at-a-time
result (tolerance 1e-4 for fp32 forms). The stage also overlaps image decoding with the network
through a DataLoader with ``make_cam.num_workers`` workers; this benchmark feeds decoded arrays,
so it measures the network part only. A VOC-size pass of ResNet-38 takes seconds on a CPU, so
the CPU run uses few images (default 2).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench, also when loaded by path

from affinitynet.algorithms.cam import multiscale_cam  # noqa: E402
from affinitynet.algorithms.resize import resize_image  # noqa: E402
from affinitynet.config import MakeCamConfig  # noqa: E402
from affinitynet.data.transforms import normalize  # noqa: E402
from affinitynet.models import build_classifier  # noqa: E402
from affinitynet.inference import batch_flip_on, prepare  # noqa: E402
from _bench import machine, print_table_header, run_main, sync  # noqa: E402

TOLERANCE = 1e-4


def one_pass_at_a_time(net: torch.nn.Module, image: np.ndarray, label: np.ndarray,
                       scales: tuple[float, ...], device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """The original's form: every scale and every flip its own forward pass (no_grad, NCHW).
    Same maths and summation order as ``multiscale_cam``; returns (keys, maps)."""
    height, width = image.shape[:2]
    label_t = torch.from_numpy(label.astype(np.float32)).to(device).view(1, -1, 1, 1)
    total = None
    with torch.no_grad():
        for scale in scales:
            x = normalize(resize_image(image, scale), net.normalization)[None].to(device)
            for flipped in (False, True):
                cam = net.cam(x.flip(-1) if flipped else x)
                cam = F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False) * label_t
                cam = cam[0].flip(-1) if flipped else cam[0]
                total = cam if total is None else total + cam
        norm = total / (total.amax(dim=(1, 2), keepdim=True) + 1e-5)
        keys = np.flatnonzero(label).astype(np.int64)
        return keys, norm[torch.from_numpy(keys).to(device)].cpu().numpy()


def network_flops(net: torch.nn.Module, height: int, width: int, scales: tuple[float, ...]) -> float:
    """FLOPs of the 8 passes of one image (torch's FlopCounterMode on a meta-device copy, so
    nothing is computed): what every variant executes, whatever its batching or layout."""
    meta = copy.deepcopy(net).to("meta")
    blank = np.zeros((height, width, 3), np.uint8)
    total = 0
    for scale in scales:
        h, w = resize_image(blank, scale).shape[:2]
        with FlopCounterMode(display=False) as counter:
            meta.cam(torch.empty(2, 3, h, w, device="meta"))  # the image and its flip
        total += counter.get_total_flops()
    return float(total)


def matmul_rate(device: torch.device, n: int = 4096, repeats: int = 3) -> float:
    """FLOP/s of an n x n fp32 matrix product on ``device``: the dense-arithmetic rate this
    machine reaches with the same threads, for comparison with the passes' rate."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2, help="random images (each timed once per variant)")
    parser.add_argument("--size", default="500x375", help="image width x height")
    parser.add_argument("--scales", default=",".join(map(str, MakeCamConfig().scales)))
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--backbone", default=None, help="default resnet38 (tiny with --quick)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--bf16-cpu", action="store_true", help="also time bf16 autocast on the CPU")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: tiny backbone, one 64x48 image, scales 1.0,0.5 (numbers meaningless)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.size, args.scales = 1, "64x48", "1.0,0.5"
        args.backbone = args.backbone or "tiny"
    args.backbone = args.backbone or "resnet38"
    width, height = map(int, args.size.lower().split("x"))
    scales = tuple(float(s) for s in args.scales.split(","))
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))

    torch.manual_seed(0)
    net = build_classifier(args.backbone, args.classes)
    state = net.state_dict()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(args.images)]
    labels = []
    for _ in images:  # 1-3 present classes, as in most VOC images
        label = np.zeros(args.classes, np.float32)
        label[rng.choice(args.classes, size=int(rng.integers(1, 4)), replace=False)] = 1
        labels.append(label)

    def norm(image: np.ndarray) -> torch.Tensor:
        return normalize(image, net.normalization)

    def make_cam_form(channels_last: bool, batch_flip: bool, amp: bool) -> Callable:
        model = net
        if channels_last:  # converts the weights in place: give it its own copy
            model = build_classifier(args.backbone, args.classes)
            model.load_state_dict(state)
        cam_fn = prepare(model, device, channels_last=channels_last, amp=amp).cam
        if amp and device.type == "cpu":  # make-cam itself autocasts on CUDA only
            plain_fn = cam_fn

            def cam_fn(x: torch.Tensor) -> torch.Tensor:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return plain_fn(x)

        return lambda image, label: multiscale_cam(cam_fn, image, label, norm, scales=scales,
                                                   flip=True, batch_flip=batch_flip, device=device)

    net.eval().to(device)
    stage_batch = batch_flip_on(device)
    variants: list[tuple[str, Callable]] = [
        ("one pass at a time (8 passes, no_grad, NCHW)",
         lambda image, label: one_pass_at_a_time(net, image, label, scales, device)),
        (f"make-cam's form (inference_mode, channels-last, "
         f"{'flip pair batched' if stage_batch else '8 passes of 1'})",
         make_cam_form(True, stage_batch, False))]
    if device.type == "cuda":
        variants.append(("make-cam bf16 autocast (same form)", make_cam_form(True, stage_batch, True)))
    else:
        variants.append(("flip pair batched, inference_mode, NCHW", make_cam_form(False, True, False)))
        variants.append(("flip pair batched, inference_mode, channels-last", make_cam_form(True, True, False)))
        if args.bf16_cpu:
            variants.append(("make-cam's form + bf16 autocast on CPU (not used by make-cam)",
                             make_cam_form(True, stage_batch, True)))

    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"Machine: {machine(gpu)}\n")
    print(f"CAM inference, {args.backbone} ({sum(p.numel() for p in net.parameters()) / 1e6:.1f}M "
          f"parameters), {args.classes} classes, {len(images)} random {width}x{height} image(s), "
          f"scales {list(scales)} x flip = {2 * len(scales)} passes per image, on {device.type}; "
          f"variants alternate per image after one warm-up pass each.\n")
    # warm-up: first calls allocate, pick kernels and (CUDA) initialise cuDNN
    small = images[0][: max(16, height // 4), : max(16, width // 4)]
    for _, fn in variants:
        fn(small, labels[0])
    sync(device)
    seconds = {name: 0.0 for name, _ in variants}
    outputs: dict[str, list[np.ndarray]] = {name: [] for name, _ in variants}
    for i, (image, label) in enumerate(zip(images, labels)):
        order = variants if i % 2 == 0 else variants[::-1]
        for name, fn in order:
            sync(device)
            start = time.perf_counter()
            keys, maps = fn(image, label)
            sync(device)
            seconds[name] += time.perf_counter() - start
            outputs[name].append(maps)
    base_name = variants[0][0]
    base = len(images) / seconds[base_name]
    print_table_header("variant", "time / image", "images/s", "speedup", "max rel. error vs one-pass",
                       "within 1e-4", align="lrrrrl")
    results = {}
    for name, _ in variants:
        ips = len(images) / seconds[name]
        err = max(rel_error(a, b) for a, b in zip(outputs[name], outputs[base_name]))
        results[name] = (ips / base, err)
        print(f"| {name} | {seconds[name] / len(images):.2f} s | {ips:.3f} | {ips / base:.2f}x | "
              f"{err:.1e} | {'yes' if err <= TOLERANCE else 'no'} |", flush=True)
    if device.type != "cuda":
        print("\nCUDA rows (bf16 autocast vs fp32 throughput and agreement): skipped: no CUDA device")
    print(f"\nLoad average at end: {os.getloadavg()[0]:.2f}. make-cam also decodes images in "
          f"DataLoader workers (make_cam.num_workers, default 2), overlapping loading with the "
          f"network; not part of these timings.")
    flops = network_flops(net, height, width, scales)
    rate = flops * len(images) / seconds[base_name]
    n = 256 if args.quick else 4096
    matmul = matmul_rate(device, n=n)
    print("\nWork per image (the same in every variant, batching and layout change no FLOP):\n")
    print_table_header("quantity", "value", align="lr")
    print(f"| network FLOPs per image, {2 * len(scales)} passes | {flops / 1e12:.2f} TFLOP |")
    print(f"| rate of 'one pass at a time' | {rate / 1e9:.0f} GFLOP/s |")
    print(f"| fp32 matrix product ({n}x{n}) on the same device and threads | {matmul / 1e9:.0f} GFLOP/s |")
    print(f"| rate a 1.5x speed-up would need | {1.5 * rate / 1e9:.0f} GFLOP/s "
          f"({1.5 * rate / matmul:.1f}x the matrix product) |")
    make_cam_name = variants[1][0]
    speedup, err = results[make_cam_name]
    print("\nTargets:")
    print(f"- make-cam form >= 1.5x one pass at a time ({speedup:.2f}x): "
          f"{'met' if speedup >= 1.5 else 'NOT met'}")
    print(f"- outputs agree within {TOLERANCE:g} relative ({err:.1e}): "
          f"{'met' if err <= TOLERANCE else 'NOT met'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; ``--quick`` runs single-threaded (see ``_bench.run_main``)."""
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
