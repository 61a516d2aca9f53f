"""Estimate: wall time of the whole PASCAL VOC train_aug pipeline on one GPU, from measured
per-image times.

Usage: python benchmarks/estimate_voc.py [--gpu-times FILE_OR_JSON] [--cores 16] [--workers 2]
                                         [--images 10582] [--quick]
       python benchmarks/estimate_voc.py --gpu-only gpu_times.json   (on a GPU machine)

Stages and the paper's settings: train-cam (ResNet-38 classifier, 15 epochs, batch 16, crop 448),
make-cam (4 scales x flip), make-aff-labels (two dense CRFs per image, a process pool over the
host's cores), train-aff (AffinityNet, 8 epochs, batch 8, crop 448), random walk (AffinityNet
forward + walk), train-seg (segmentation network on the pseudo labels, 12 epochs, batch 8, crop
448: the ``train_seg`` defaults), segment (the 1,449 val images, one scale x flip). N = 10,582
train_aug images (VOC train, the evaluation split, is inside it), V = 1,449.

    T = 15 N max(t_cls_step / 16, t_load_cls / W)        train-cam
      +    N  t_make_cam                                  make-cam (decoding overlapped)
      +    N  t_crf / P                                   make-aff-labels
      +  8 N max(t_aff_step / 8, t_load_aff / W)          train-aff
      +    N (t_aff_forward + t_walk)                     random walk
      + 12 N max(t_seg_step / 8, t_load_seg / W)          train-seg
      +    V  t_segment                                   segment

W = DataLoader workers, P = CRF processes (host cores). Measured here on the CPU: t_crf (one
process, VOC size, 2 CRFs of 10 iterations), t_walk (``propagate_cams`` at VOC size, sparse),
t_load_cls / t_load_aff / t_load_seg (JPEG decode + the stages' augmentation at crop 448, one
core). The GPU times t_cls_step, t_make_cam, t_aff_step, t_aff_forward, t_seg_step, t_segment
(and a GPU t_walk) are measured here when
CUDA is available; otherwise they come from ``--gpu-times`` (a JSON file or string, keys as in
``GPU_KEYS``, seconds), and without either they are reported as missing — never guessed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench, also when loaded by path

from affinitynet.algorithms.affinity import (affinity_from_features, affinity_labels,  # noqa: E402
                                             affinity_loss)
from affinitynet.algorithms.cam import multiscale_cam  # noqa: E402
from affinitynet.algorithms.random_walk import propagate_cams  # noqa: E402
from affinitynet.data.synthetic import make_sample  # noqa: E402
from affinitynet.algorithms.segmentation import multiscale_probabilities  # noqa: E402
from affinitynet.data.transforms import (AffinityAugment, ClassificationTransform,  # noqa: E402
                                         SegmentationTransform, normalize)
from affinitynet.inference import confident_label_map, crf_scores, torch_threads  # noqa: E402
from affinitynet.config import AffLabelsConfig, RunConfig  # noqa: E402
from affinitynet.models import (build_affinity_net, build_classifier, build_optimizer,  # noqa: E402
                                build_segmentation_net)
from affinitynet.algorithms.resize import WorkImage  # noqa: E402
from affinitynet.stages.train_seg import segmentation_loss  # noqa: E402
from _bench import cuda_suffix, machine, print_table_header, sync, usable_cores  # noqa: E402

VOC_TRAIN_AUG, VOC_VAL = 10_582, 1_449
VOC_SIZE = (500, 375)  # width, height
paper = RunConfig()  # the paper's settings (and the train_seg defaults)
CAM_EPOCHS, AFF_EPOCHS, SEG_EPOCHS = paper.train_cam.epochs, paper.train_aff.epochs, paper.train_seg.epochs
CAM_BATCH, AFF_BATCH, SEG_BATCH = paper.train_cam.batch_size, paper.train_aff.batch_size, paper.train_seg.batch_size
CROP = paper.train_cam.crop
WALK = {k: getattr(paper.random_walk, k) for k in ("alpha", "beta", "logt", "radius")}

GPU_KEYS: dict[str, str] = {
    "train_cam_step_s": f"ResNet-38 classifier training step, batch {CAM_BATCH}, crop {CROP}, fp32 (the default; amp: true is faster)",
    "make_cam_s_per_image": "make-cam per VOC-size image, 4 scales x flip, fp32",
    "train_aff_step_s": f"ResNet-38 AffinityNet training step, batch {AFF_BATCH}, crop {CROP}, fp32 (the default; amp: true is faster)",
    "aff_forward_s_per_image": "AffinityNet forward + pair affinities per VOC-size image",
    "train_seg_step_s": f"ResNet-38 segmentation network training step, batch {SEG_BATCH}, crop {CROP}, fp32 (the default; amp: true is faster)",
    "segment_s_per_image": "segment per VOC-size image, scale 1 x flip, fp32",
}
OPTIONAL_GPU_KEYS = {"random_walk_s_per_image": "random walk per VOC-size image on the GPU"}


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1,
                sync: Callable[[], None] = lambda: None) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def voc_scene(index: int, size: tuple[int, int] = VOC_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic scene resized to VOC size: image (H, W, 3) uint8, label (H, W) uint8."""
    s = make_sample(0, "train", index)
    image = np.asarray(Image.fromarray(s.image).resize(size, Image.BICUBIC))
    label = np.asarray(Image.fromarray(s.label).resize(size, Image.NEAREST))
    return image, label


def cams_from_label(label: np.ndarray, num_classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """keys (k,), maps (k, H, W) in [0, 1]: each present class's mask, blurred, / its max."""
    keys = np.array([c for c in range(num_classes) if (label == c + 1).any()], np.int64)
    sigma = 0.03 * max(label.shape)
    maps = np.stack([ndimage.gaussian_filter((label == k + 1).astype(np.float32), sigma) for k in keys])
    return keys, maps / (maps.max(axis=(1, 2), keepdims=True) + 1e-5)


def measure_cpu(n_images: int, size: tuple[int, int] = VOC_SIZE) -> dict[str, float]:
    """Per-image seconds of the CPU-side parts on this machine (medians over ``n_images``)."""
    scenes = [voc_scene(i, size) for i in range(n_images)]
    out: dict[str, list[float]] = {"crf": [], "walk": [], "load_cls": [], "load_aff": [], "load_seg": []}
    width, height = size
    h, w = -(-height // 8), -(-width // 8)
    gen = torch.Generator().manual_seed(0)
    cls_tf = ClassificationTransform(CROP, paper.train_cam.resize_long, paper.train_cam.color_jitter, generator=gen)
    aff_tf = AffinityAugment(CROP, paper.train_aff.resize_long, paper.train_aff.flip, paper.train_aff.color_jitter,
                             generator=gen)
    seg_tf = SegmentationTransform(CROP, paper.train_seg.resize_long, paper.train_seg.color_jitter, generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loader worker / a CRF process each have one core
    try:
        for i, (image, label) in enumerate(scenes):
            keys, maps = cams_from_label(label)
            start = time.perf_counter()
            work = WorkImage(image, 0)
            low, high = crf_scores(work, maps, AffLabelsConfig())  # the paper's alphas 4 / 32
            confident_label_map(work, keys, low, high)
            out["crf"].append(time.perf_counter() - start)
            jpeg = io.BytesIO()
            Image.fromarray(image).save(jpeg, format="JPEG", quality=90)
            for key, fn in (("load_cls", lambda im: cls_tf(im)), ("load_aff", lambda im: aff_tf(im, low, high)),
                            ("load_seg", lambda im: seg_tf(im, label))):
                start = time.perf_counter()
                decoded = np.asarray(Image.open(io.BytesIO(jpeg.getvalue())).convert("RGB"))
                fn(decoded)
                out[key].append(time.perf_counter() - start)
        torch.set_num_threads(threads)  # the random-walk stage runs in the main process
        for i, (image, label) in enumerate(scenes):
            keys, maps = cams_from_label(label)
            features = torch.randn(1, 32, h, w, generator=gen)
            aff = affinity_from_features(features, 5)[0]
            start = time.perf_counter()
            with torch_threads(1):  # as the random-walk stage runs the walk
                propagate_cams(keys, maps, aff, (height, width), **WALK)
            out["walk"].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return {k: float(np.median(v)) for k, v in out.items()}


def measure_gpu(device: torch.device, backbone: str = "resnet38", crop: int = CROP,
                size: tuple[int, int] = VOC_SIZE, scales: tuple[float, ...] = paper.make_cam.scales,
                repeats: int = 5, cam_batch: int = CAM_BATCH, aff_batch: int = AFF_BATCH,
                seg_batch: int = SEG_BATCH) -> dict[str, float]:
    """Per-step / per-image seconds of the network parts on ``device`` (keys of GPU_KEYS and
    OPTIONAL_GPU_KEYS). Random data: speed does not depend on it. Runs on any device; the
    estimate uses it on CUDA only."""
    from affinitynet.inference import batch_flip_on, image_affinity, prepare

    def sync_device() -> None:
        sync(device)

    amp = device.type == "cuda" and paper.train_cam.amp  # the stages' default: fp32, as the original
    gen = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}

    # train-cam step (training.fit: SGD poly; bf16 autocast only with amp)
    net = build_classifier(backbone, 20).to(device)
    opt = build_optimizer(net, lr=0.01, weight_decay=5e-4, max_step=100, momentum=5e-4)
    x = torch.randn(cam_batch, 3, crop, crop, generator=gen).to(device)
    y = (torch.rand(cam_batch, 20, generator=gen) < 0.15).float().to(device)

    def cls_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.multilabel_soft_margin_loss(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out["train_cam_step_s"] = median_time(cls_step, repeats, 2, sync_device)

    # make-cam per image: the stage's network call and fusion
    cam_fn = prepare(net, device, channels_last=True).cam  # make-cam's form (make_cam.channels_last)
    width, height = size
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = np.zeros(20, np.float32)
    label[[3, 11]] = 1
    out["make_cam_s_per_image"] = median_time(
        lambda: multiscale_cam(cam_fn, image, label, lambda im: normalize(im, net.normalization),
                               scales=scales, batch_flip=batch_flip_on(device), device=device),
        max(1, repeats // 2), 1, sync_device)
    del net, opt, x
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # train-aff step
    net = build_affinity_net(backbone).to(device)
    opt = build_optimizer(net, lr=0.01, weight_decay=5e-4, max_step=100, momentum=5e-4)
    x = torch.randn(aff_batch, 3, crop, crop, generator=gen).to(device)
    grid = torch.randint(0, 3, (aff_batch, crop // 8, crop // 8), generator=gen).to(torch.uint8)
    labels = [t.to(device) for t in affinity_labels(grid, 5)]

    def aff_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = affinity_loss(affinity_from_features(net(x).float(), 5), *labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out["train_aff_step_s"] = median_time(aff_step, repeats, 2, sync_device)

    # random walk: AffinityNet forward at VOC size, then the walk on the same device
    affinity_net = prepare(net, device, channels_last=True)  # the stage's form (random_walk.channels_last)
    out["aff_forward_s_per_image"] = median_time(lambda: image_affinity(affinity_net, image, 5),
                                                 repeats, 1, sync_device)
    aff = image_affinity(affinity_net, image, 5)
    keys = np.array([3, 11])
    maps = np.random.default_rng(1).random((2, height, width), dtype=np.float32)
    out["random_walk_s_per_image"] = median_time(
        lambda: propagate_cams(keys, maps, aff, (height, width), **WALK), repeats, 1, sync_device)
    del net, opt, x
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # train-seg step and segment per image (the stages' forms)
    net = build_segmentation_net(backbone, 20).to(device)
    opt = build_optimizer(net, lr=0.01, weight_decay=5e-4, max_step=100, momentum=0.9)
    x = torch.randn(seg_batch, 3, crop, crop, generator=gen).to(device)
    target = torch.randint(0, 21, (x.shape[0], crop, crop), generator=gen).to(device)

    def seg_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = segmentation_loss(net(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out["train_seg_step_s"] = median_time(seg_step, repeats, 2, sync_device)
    net.eval()
    out["segment_s_per_image"] = median_time(
        lambda: multiscale_probabilities(net, image, lambda im: normalize(im, net.normalization),
                                         scales=(1.0,), flip=True, device=device),
        repeats, 1, sync_device)
    return out


def load_gpu_times(text: str) -> dict[str, float]:
    """--gpu-times: a JSON file path or a JSON object string -> {key: seconds}."""
    path = Path(text)
    data = json.loads(path.read_text() if path.is_file() else text)
    unknown = set(data) - set(GPU_KEYS) - set(OPTIONAL_GPU_KEYS) - {"device"}
    if unknown:
        raise SystemExit(f"--gpu-times: unknown keys {sorted(unknown)}; expected {sorted(GPU_KEYS)}")
    return data


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h"


def training_row(stage: str, symbol: str, step_key: str, load_key: str, epochs: int, batch: int,
                 cpu: dict[str, float], gpu: dict[str, float], n: int,
                 workers: int) -> tuple[str, str, float | None]:
    """A training stage's row: epochs x images x max(GPU step per image, loading per image)."""
    load = cpu[load_key] / workers
    if step_key in gpu:
        per = max(gpu[step_key] / batch, load)
        return (stage, f"{epochs} x {n} x max({gpu[step_key]:.3f}/{batch}, {cpu[load_key]:.3f}/{workers})",
                epochs * n * per)
    return (stage, f"{epochs} x {n} x max({symbol}/{batch} MISSING, {cpu[load_key]:.3f}/{workers}) "
            f">= {hours(epochs * n * load)} (loading bound)", None)


def estimate(cpu: dict[str, float], gpu: dict[str, float], n: int, cores: int,
             workers: int) -> list[tuple[str, str, float | None]]:
    """Rows (stage, formula with numbers, seconds or None when a GPU number is missing)."""
    def have(*keys: str) -> bool:
        return all(k in gpu for k in keys)

    rows: list[tuple[str, str, float | None]] = []
    rows.append(training_row("train-cam", "t_cls_step", "train_cam_step_s", "load_cls", CAM_EPOCHS, CAM_BATCH,
                             cpu, gpu, n, workers))
    if have("make_cam_s_per_image"):
        rows.append(("make-cam", f"{n} x {gpu['make_cam_s_per_image']:.3f}", n * gpu["make_cam_s_per_image"]))
    else:
        rows.append(("make-cam", f"{n} x t_make_cam MISSING", None))
    rows.append(("make-aff-labels (CRF)", f"{n} x {cpu['crf']:.3f} / {cores} processes", n * cpu["crf"] / cores))
    rows.append(training_row("train-aff", "t_aff_step", "train_aff_step_s", "load_aff", AFF_EPOCHS, AFF_BATCH,
                             cpu, gpu, n, workers))
    walk = gpu.get("random_walk_s_per_image", cpu["walk"])
    where = "GPU" if "random_walk_s_per_image" in gpu else "CPU"
    if have("aff_forward_s_per_image"):
        rows.append(("random walk", f"{n} x ({gpu['aff_forward_s_per_image']:.3f} forward + {walk:.3f} "
                     f"walk on {where})", n * (gpu["aff_forward_s_per_image"] + walk)))
    else:
        rows.append(("random walk", f"{n} x (t_aff_forward MISSING + {walk:.3f} walk on {where}) "
                     f">= {hours(n * walk)}", None))
    rows.append(training_row("train-seg", "t_seg_step", "train_seg_step_s", "load_seg", SEG_EPOCHS, SEG_BATCH,
                             cpu, gpu, n, workers))
    v = VOC_VAL
    if have("segment_s_per_image"):
        rows.append(("segment (val)", f"{v} x {gpu['segment_s_per_image']:.3f}", v * gpu["segment_s_per_image"]))
    else:
        rows.append(("segment (val)", f"{v} x t_segment MISSING", None))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu-times", default="", help="JSON file or string with the GPU seconds")
    parser.add_argument("--images", type=int, default=VOC_TRAIN_AUG, help="N (VOC train_aug: 10582)")
    parser.add_argument("--cores", type=int, default=0, help="CRF processes on the GPU host (default: this machine's cores)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (the stages' default 2)")
    parser.add_argument("--samples", type=int, default=6, help="VOC-size images measured on the CPU")
    parser.add_argument("--quick", action="store_true", help="smoke mode: 2 images at 250x188")
    parser.add_argument("--gpu-only", metavar="JSON",
                        help="on a GPU machine: measure the GPU seconds only and write them to JSON "
                             "(for --gpu-times elsewhere; the CPU part needs pydensecrf)")
    args = parser.parse_args(argv)
    if args.gpu_only:
        if not torch.cuda.is_available():
            print("--gpu-only: no CUDA device", file=sys.stderr)
            return 2
        times = {"device": torch.cuda.get_device_name(0), **measure_gpu(torch.device("cuda"))}
        Path(args.gpu_only).write_text(json.dumps(times, indent=1) + "\n")
        print(json.dumps(times, indent=1))
        return 0
    size = VOC_SIZE
    if args.quick:
        args.samples, size = 2, (250, 188)
    cores = args.cores or usable_cores()

    print(f"Machine: {machine(cuda_suffix(), threads=False)}\n")
    cpu = measure_cpu(args.samples, size)
    gpu: dict[str, float] = {}
    source = "missing (no CUDA device here, no --gpu-times)"
    if args.gpu_times:
        gpu, source = load_gpu_times(args.gpu_times), f"--gpu-times ({gpu_device(args.gpu_times)})"
    elif torch.cuda.is_available():
        gpu = measure_gpu(torch.device("cuda"), size=size)
        source = f"measured here on {torch.cuda.get_device_name(0)}"
    print(f"Per-image times (medians; CPU ones over {args.samples} synthetic scenes at "
          f"{size[0]}x{size[1]}, one thread each):\n")
    print_table_header("quantity", "seconds", "where", align="lrl")
    cpu_names = {"crf": "t_crf: make-aff-labels per image (2 dense CRFs, 10 iterations), 1 process",
                 "walk": "t_walk: random walk per image (propagate_cams, sparse, beta 8, logt 8)",
                 "load_cls": f"t_load_cls: JPEG decode + train-cam augmentation (crop {CROP})",
                 "load_aff": f"t_load_aff: JPEG decode + train-aff augmentation (crop {CROP})",
                 "load_seg": f"t_load_seg: JPEG decode + train-seg augmentation (crop {CROP})"}
    for key, name in cpu_names.items():
        print(f"| {name} | {cpu[key]:.4f} | CPU, measured here |")
    for key, name in {**GPU_KEYS, **OPTIONAL_GPU_KEYS}.items():
        value = f"{gpu[key]:.4f}" if key in gpu else "MISSING"
        where = source if key in gpu else ("not given (the CPU walk is used)" if key in OPTIONAL_GPU_KEYS
                                           else "needs a GPU")
        print(f"| {key}: {name} | {value} | {where} |")
    rows = estimate(cpu, gpu, args.images, cores, args.workers)
    print(f"\nEstimate for N = {args.images} images, {cores} CRF processes, {args.workers} loader "
          f"workers, one GPU:\n")
    print_table_header("stage", "formula", "time", align="llr")
    for stage, formula, seconds in rows:
        print(f"| {stage} | {formula} | {hours(seconds) if seconds is not None else 'MISSING'} |")
    known = sum(s for _, _, s in rows if s is not None)
    missing = [stage for stage, _, s in rows if s is None]
    if missing:
        print(f"\nTotal: not computable; the stages without GPU numbers ({', '.join(missing)}) need "
              f"a lent GPU (run this script there, or pass --gpu-times with the keys "
              f"{', '.join(GPU_KEYS)}). The stages that are known sum to {hours(known)}.")
    else:
        print(f"\nTotal: {hours(known)}")
    return 0


def gpu_device(text: str) -> str:
    with contextlib.suppress(Exception):
        path = Path(text)
        return str(json.loads(path.read_text() if path.is_file() else text).get("device", "device not named"))
    return "device not named"


if __name__ == "__main__":
    sys.exit(main())
