"""Benchmark: does the pipeline stay practical at MS-COCO 2014's size (122,218 images with objects)?

Usage: python benchmarks/bench_coco_scale.py [--images 20000] [--small 1000] [--quick]

Builds a COCO-2014-layout folder of ``--images`` small generated images (64x48 / 48x64 px JPEGs,
2/3 train2014, 1/3 val2014, 1-3 instances each as polygons, compressed RLE and crowd RLE, 5 %
without any annotation) with its two ``instances_*.json`` files, then measures:

1. ``prepare-coco`` (``affinitynet.data.prepare_coco.prepare_coco``, one process): wall time per
   image, first run and rerun (everything done); and at COCO's own size (640x480, 7 polygon
   instances of 16-32 points) the per-mask cost of rasterising and writing, which dominates there;
2. disk per image of every per-image output at COCO size: the ground-truth PNG, a CAM file
   (``artifacts.save_cam`` of synthetic CAMs: 3 present classes, smooth maps upsampled from the
   stride-8 grid as make-cam's are), the CRF score file make-aff-labels keeps for AffinityNet
   (``artifacts.save_crf_scores`` of the paper's dense CRF with alpha 4 and 32, run on a real
   photo of the parity data resized to that size, with those CAMs), label PNGs shaped like the
   CAM prediction / pseudo labels / segmentation and like the confident labels (with unsure
   regions), the image symlink; with the totals for 122,218 images (seg_pred: the 40,137 val
   images); and the CRF score files at VOC size (500x375) by number of classes in the image,
   with the total for VOC's train_aug (10,582 images, by its distribution of class counts);
3. what a rerun pays before any work, per image, at ``--small`` and at all images: reading and
   checking a split list (``VOCDataset.split``, one stat per image), reading the labels
   (``image_labels`` of every image), and listing the finished outputs (``per_image.todo``);
4. memory: peak RSS growth of the per-image loop (``per_image.for_each_image`` writing one PNG per
   image) and of the evaluation (``evaluation.evaluate_folder``) over ``--small`` images and over
   all train / val images, each in a fresh process (Linux VmHWM, reset before the loop).

Prints markdown tables and the machine line. ``--quick`` (a few hundred images) is the smoke
mode; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench, also when loaded by path

from affinitynet import artifacts  # noqa: E402
from affinitynet.data.images import save_label_png  # noqa: E402
from affinitynet.data.prepare_coco import Instance, MaskTask, prepare_coco, write_mask  # noqa: E402
from _bench import load_average, machine, print_table_header, run_main  # noqa: E402

COCO_TRAIN, COCO_VAL = 82_081, 40_137  # COCO 2014 images with at least one annotation
COCO_IMAGES = COCO_TRAIN + COCO_VAL
COCO_SIZE = (480, 640)  # H, W of most COCO images
VOC_SIZE = (375, 500)  # H, W of most VOC images
# images of VOC 2012 train_aug (10,582) with 1, 2, ... 6 object classes, counted from the image
# labels of the original PSA release (voc12/cls_labels.npy); mean 1.56 classes per image
VOC_TRAIN_AUG_CLASS_COUNTS = {1: 6249, 2: 3104, 3: 969, 4: 210, 5: 46, 6: 4}
PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden" / "cam_crf_2007_000003.npz"
SMALL_SIZES = ((48, 64), (64, 48))  # H, W of the generated images
NUM_CATEGORIES = 80


# -- the generated COCO-layout folder ----------------------------------------------------------
def _jpeg(height: int, width: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _instances(rng: np.random.Generator, height: int, width: int) -> list[dict]:
    """1-3 instances: a polygon, a compressed-RLE blob, sometimes a crowd (uncompressed RLE)."""
    out = []
    for k in range(int(rng.integers(1, 4))):
        cat = int(rng.integers(1, NUM_CATEGORIES + 1))
        x0, y0 = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        x1, y1 = int(rng.integers(x0 + 4, width + 1)), int(rng.integers(y0 + 4, height + 1))
        if k == 0:
            seg: list | dict = [[x0, y0, x1, y0, (x0 + x1) / 2, y1]]
            crowd = 0
        else:
            mask = np.zeros((height, width), np.uint8)
            mask[y0:y1, x0:x1] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            crowd = int(rng.random() < 0.2)
            if crowd:
                seg = {"size": [height, width], "counts": _uncompressed(mask)}
            else:
                seg = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
        out.append({"category_id": cat, "segmentation": seg, "iscrowd": crowd})
    return out


def _uncompressed(mask: np.ndarray) -> list[int]:
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def build_coco(root: Path, images: int, seed: int = 0) -> dict[str, int]:
    """Write ``images`` tiny images and their instance files under ``root`` (COCO 2014 layout)."""
    rng = np.random.default_rng(seed)
    jpegs = {size: _jpeg(*size, seed=i) for i, size in enumerate(SMALL_SIZES)}
    categories = [{"id": c, "name": f"category {c}", "supercategory": "thing"} for c in range(1, NUM_CATEGORIES + 1)]
    n_train = images * 2 // 3
    ann_id = 1
    counts = {}
    for split, folder, start, count in (("train", "train2014", 0, n_train), ("val", "val2014", n_train, images - n_train)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        imgs, anns = [], []
        for image_id in range(start, start + count):
            height, width = SMALL_SIZES[image_id % 2]
            file_name = f"COCO_{folder}_{image_id:012d}.jpg"
            (root / folder / file_name).write_bytes(jpegs[(height, width)])
            imgs.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            if rng.random() < 0.05:
                continue  # no annotation, as 1 % of COCO's images
            for a in _instances(rng, height, width):
                anns.append({"id": ann_id, "image_id": image_id, **a})
                ann_id += 1
        (root / "annotations").mkdir(exist_ok=True)
        data = {"images": imgs, "annotations": anns, "categories": categories}
        (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(data))
        counts[split] = count
    return counts


# -- COCO-size outputs -------------------------------------------------------------------------
def synthetic_cams(rng: np.random.Generator, classes: int = 3, size: tuple[int, int] = COCO_SIZE) -> np.ndarray:
    """(classes, H, W) float32 CAM-like maps in [0, 1] at ``size`` (default COCO's 480x640): a few
    Gaussian blobs per class on the stride-8 grid, ReLU'd, bilinearly upsampled and
    max-normalised, as make-cam's are."""
    h, w = size[0] // 8, size[1] // 8
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = np.zeros((classes, h, w), np.float32)
    for c in range(classes):
        for _ in range(int(rng.integers(1, 4))):
            cy, cx, s = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 12)
            grid[c] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        grid[c] = np.maximum(grid[c] + rng.normal(0, 0.02, (h, w)) - 0.05, 0)
    up = F.interpolate(torch.from_numpy(grid)[None], size=size, mode="bilinear", align_corners=False)[0].numpy()
    return up / np.maximum(up.reshape(classes, -1).max(axis=1), 1e-5)[:, None, None]


def star_polygon(rng: np.random.Generator) -> list[float]:
    """A star-shaped polygon of 16-32 points, 30-150 px in radius, inside the COCO-size image."""
    n = int(rng.integers(16, 33))
    cy, cx = rng.uniform(60, COCO_SIZE[0] - 60), rng.uniform(60, COCO_SIZE[1] - 60)
    radius = rng.uniform(30, 150) * rng.uniform(0.6, 1.0, n)
    angle = np.sort(rng.uniform(0, 2 * np.pi, n))
    xs = np.clip(cx + radius * np.cos(angle), 0, COCO_SIZE[1] - 1)
    ys = np.clip(cy + radius * np.sin(angle), 0, COCO_SIZE[0] - 1)
    return np.stack([xs, ys], axis=1).ravel().round(2).tolist()


def coco_size_outputs(folder: Path, count: int, seed: int = 1) -> dict[str, float]:
    """Per-image ms of the ground-truth masks at COCO size (header read, 7 instances, class and
    instance PNGs) and the
    mean bytes on disk of every per-image output kind."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / "image.jpg"
    image.write_bytes(_jpeg(*COCO_SIZE, seed=seed))
    tasks = [MaskTask(f"gt_{i}", image, *COCO_SIZE,
                      tuple(Instance(7 * i + k, int(rng.integers(1, 81)), False, [star_polygon(rng)]) for k in range(7)),
                      folder / f"gt_{i}.png", folder / f"objects_{i}.png", folder / "instances.json")
             for i in range(count)]
    t0 = time.perf_counter()
    for task in tasks:
        write_mask(task)
    mask_ms = 1000 * (time.perf_counter() - t0) / count
    sizes: dict[str, list[int]] = {"gt": [disk_bytes(t.out) for t in tasks],
                                   "objects": [disk_bytes(t.objects_out) for t in tasks],
                                   "cam": [], "label": [], "confident": []}
    for i in range(count):
        cams = synthetic_cams(rng)
        keys = np.sort(rng.choice(NUM_CATEGORIES, 3, replace=False))
        artifacts.save_cam(folder / f"cam_{i}.npz", keys, cams, NUM_CATEGORIES)
        best = cams.max(axis=0)
        label = np.where(best > 0.2, keys[cams.argmax(axis=0)] + 1, 0).astype(np.uint8)
        save_label_png(folder / f"label_{i}.png", label)
        confident = np.where(best > 0.6, label, np.where(best < 0.05, 0, 255)).astype(np.uint8)
        save_label_png(folder / f"confident_{i}.png", confident)
        for kind, name in (("cam", f"cam_{i}.npz"), ("label", f"label_{i}.png"), ("confident", f"confident_{i}.png")):
            sizes[kind].append(disk_bytes(folder / name))
    return {"mask_ms": mask_ms, **{k: float(np.mean(v)) for k, v in sizes.items()}}


def crf_score_bytes(folder: Path, size: tuple[int, int], classes: int, count: int, seed: int = 2) -> float:
    """Mean bytes on disk of the CRF score file of an image of ``size`` with ``classes`` present
    classes: the paper's CRF (alpha 4 and 32, 10 steps) on a real photo resized to ``size`` with
    synthetic CAMs, written as make-aff-labels writes it (float16)."""
    from affinitynet.algorithms.crf import crf_with_background

    rng = np.random.default_rng(seed)
    photo = np.asarray(Image.fromarray(np.load(PHOTO)["image"]).resize(size[::-1], Image.BICUBIC))
    folder.mkdir(parents=True, exist_ok=True)
    sizes = []
    for i in range(count):
        cams = synthetic_cams(rng, classes, size)
        low, high = (crf_with_background(photo, cams, alpha, 10) for alpha in (4.0, 32.0))
        path = folder / f"crf_{classes}_{i}.npz"
        artifacts.save_crf_scores(path, np.arange(classes), low, high)
        sizes.append(disk_bytes(path))
    return float(np.mean(sizes))


def disk_bytes(path: Path) -> int:
    """Bytes the file takes on disk (allocated blocks; a link itself, not its target)."""
    return os.lstat(path).st_blocks * 512


# -- what a rerun pays before any work --------------------------------------------------------
def rerun_costs(root: Path, count: int | None) -> dict[str, float]:
    """Seconds to read + check the train split, read every image's labels, and list the finished
    outputs (``todo`` with every output present) for the first ``count`` train images."""
    from affinitynet.per_image import todo
    from affinitynet.data.voc import VOCDataset

    split = "train"
    if count is not None:  # a split list of the first ``count`` train images
        first = VOCDataset(root).split("train", check_images=False)[:count]
        split = "bench_first"
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{n}\n" for n in first))
    voc = VOCDataset(root)
    t0 = time.perf_counter()
    names = voc.split(split)  # reads the list and checks that every image exists
    t_split = time.perf_counter() - t0
    if count is not None:
        voc.split_path(split).unlink()
    voc = VOCDataset(root)  # fresh: the labels file is read again
    t0 = time.perf_counter()
    for n in names:
        voc.image_labels(n)
    t_labels = time.perf_counter() - t0
    gt = root / "SegmentationClass"
    t0 = time.perf_counter()
    left = todo(names, lambda n: gt / f"{n}.png", [gt])
    t_todo = time.perf_counter() - t0
    assert not left
    return {"images": len(names), "split": t_split, "labels": t_labels, "todo": t_todo}


# -- memory of the per-image loop and of the evaluation (fresh processes) -----------------------
CHILD = "--child"


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def child(kind: str, root: str, split: str, count: int, out: str) -> dict[str, float]:
    """In a fresh process: run the per-image loop or the evaluation over ``count`` images of
    ``split`` and return RSS before, peak RSS during (MiB) and seconds."""
    from affinitynet.per_image import for_each_image
    from affinitynet.data.voc import VOCDataset
    from affinitynet.evaluation import evaluate_folder

    torch.set_num_threads(1)
    voc = VOCDataset(root)
    names = voc.split(split)[:count]
    out_dir = Path(out)

    def one(name: str, image: np.ndarray, label: np.ndarray) -> None:
        save_label_png(out_dir / f"{name}.png", np.full(image.shape[:2], int(label.argmax()) + 1, np.uint8))

    # one warm-up image so that lazy imports and first-call allocations are in the baseline
    if kind == "loop":
        for_each_image(voc, names[:1], lambda n: out_dir / f"{n}.png", [out_dir], one, num_workers=0, desc="warm-up")
    else:
        evaluate_folder(Path(root) / "SegmentationClass", voc, names[:1])
    before = _rss_kib("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    if kind == "loop":
        for_each_image(voc, names, lambda n: out_dir / f"{n}.png", [out_dir], one, num_workers=0, desc="loop")
    else:  # the ground truth as the prediction: the cost is reading and counting, not the values
        evaluate_folder(Path(root) / "SegmentationClass", voc, names)
    seconds = time.perf_counter() - t0
    peak = _rss_kib("VmHWM") if reset else 0
    return {"images": len(names), "before_mib": before / 1024, "peak_mib": peak / 1024,
            "growth_mib": max(peak - before, 0) / 1024 if reset else float("nan"), "seconds": seconds}


def measure(kind: str, root: Path, split: str, count: int, work: Path) -> dict[str, float]:
    out = work / f"{kind}_{split}_{count}"
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), CHILD, kind, str(root), split, str(count),
                           str(out)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} {count} failed:\n{proc.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the report ----------------------------------------------------------------------------------
def _mib(b: float) -> str:
    return f"{b / 2**20:.1f} MiB"


def _gib(b: float) -> str:
    return f"{b / 2**30:.1f} GiB"


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20_000, help="generated images (train + val)")
    parser.add_argument("--small", type=int, default=1_000, help="the smaller count the growth is compared with")
    parser.add_argument("--coco-size-samples", type=int, default=100, help="COCO-size masks / CAM files measured")
    parser.add_argument("--crf-samples", type=int, default=4, help="CRF score files measured per size and class count")
    parser.add_argument("--workdir", default="", help="keep the generated data here (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="smoke mode: 300 images")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.small, args.coco_size_samples, args.crf_samples = 300, 60, 4, 1
    tmp = None if args.workdir else tempfile.mkdtemp(prefix="bench_coco_")
    base = Path(args.workdir or tmp)
    try:
        return _report(args, base)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _report(args: argparse.Namespace, base: Path) -> int:
    print(f"Machine: {machine()}\n")
    coco, data, work = base / "coco", base / "data", base / "work"
    for p in (coco, data, work):
        shutil.rmtree(p, ignore_errors=True)
    t0 = time.perf_counter()
    counts = build_coco(coco, args.images)
    print(f"Generated {args.images} images ({counts['train']} train2014, {counts['val']} val2014, 64x48 / 48x64 px) "
          f"in {time.perf_counter() - t0:.1f} s.\n")

    t0 = time.perf_counter()
    first = prepare_coco(coco, data, processes=1, progress=False)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = prepare_coco(coco, data, processes=1, progress=False)
    t_again = time.perf_counter() - t0
    listed = first["train"] + first["val"]
    assert again["masks_written_train"] == again["masks_written_val"] == 0
    big = coco_size_outputs(work / "coco_size", args.coco_size_samples)
    link = data / "JPEGImages" / next(iter(sorted(os.listdir(data / "JPEGImages"))))

    print(f"### prepare-coco, one process ({args.images} generated images, {listed} with objects)\n")
    print_table_header("step", "total", "per image", f"extrapolated to {COCO_IMAGES:,} images", align="lrrr")
    per_first, per_again = t_first / args.images, t_again / args.images
    print(f"| first run (parse, link, masks at 64x48) | {t_first:.1f} s | {1000 * per_first:.2f} ms | "
          f"{per_first * COCO_IMAGES / 60:.1f} min |")
    print(f"| rerun, everything done (parse, check links, skip masks) | {t_again:.1f} s | {1000 * per_again:.2f} ms | "
          f"{per_again * COCO_IMAGES / 60:.1f} min |")
    print(f"| one image's masks at COCO size (640x480, 7 polygons of 16-32 points: header, rasterise, class and "
          "instance PNGs) | "
          f"{big['mask_ms'] * args.coco_size_samples / 1000:.1f} s / {args.coco_size_samples} | "
          f"{big['mask_ms']:.1f} ms | {big['mask_ms'] * COCO_IMAGES / 1000 / 60:.1f} min (1 process) |")

    print("\n### Disk per image at COCO size (640x480; CAMs with 3 present classes of 80)\n")
    print_table_header("output", "per image", f"total for {COCO_IMAGES:,} images", align="lrr")
    crf_coco = crf_score_bytes(work / "crf", COCO_SIZE, 3, args.crf_samples)
    rows = [("JPEGImages/ symlink (prepare-coco)", disk_bytes(link), COCO_IMAGES),
            ("SegmentationClass/ ground truth (prepare-coco)", big["gt"], COCO_IMAGES),
            ("SegmentationObject/ instances (prepare-coco)", big["objects"], COCO_IMAGES),
            ("cam/*.npz (make-cam)", big["cam"], COCO_IMAGES),
            ("cam_pred/*.png (make-cam)", big["label"], COCO_IMAGES),
            ("crf/*.npz (make-aff-labels: CRF scores of both alphas, float16)", crf_coco, COCO_IMAGES),
            ("aff_labels/*.png (make-aff-labels, with unsure 255)", big["confident"], COCO_IMAGES),
            ("pseudo_labels/*.png (random-walk)", big["label"], COCO_IMAGES),
            ("seg_pred/*.png (segment, val only)", big["label"], COCO_VAL)]
    total = 0.0
    for what, per, n in rows:
        total += per * n
        print(f"| {what} | {per / 1024:.1f} KiB | {_gib(per * n) if per * n >= 2**30 else _mib(per * n)} |")
    print(f"| **all per-image outputs** | | **{_gib(total)}** |")
    print(f"\nCOCO train2014 ({COCO_TRAIN:,} images with objects) alone: crf/ {_gib(crf_coco * COCO_TRAIN)}.")

    print("\n### The kept CRF scores at VOC size (500x375), by classes in the image\n")
    voc_images = sum(VOC_TRAIN_AUG_CLASS_COUNTS.values())
    print_table_header("classes in the image", "per image (crf/*.npz)", "train_aug images with as many",
                       "their total", align="rrrr")
    voc_total = 0.0
    for classes, n in VOC_TRAIN_AUG_CLASS_COUNTS.items():
        per = crf_score_bytes(work / "crf_voc", VOC_SIZE, classes, args.crf_samples)
        voc_total += per * n
        print(f"| {classes} | {per / 1024:.0f} KiB | {n:,} | {_mib(per * n)} |")
    print(f"| **train_aug** | **{voc_total / voc_images / 1024:.0f} KiB mean** | **{voc_images:,}** | "
          f"**{_gib(voc_total)}** |")

    print("\n### A rerun's bookkeeping (train split; nothing left to do)\n")
    small, full = rerun_costs(data, args.small), rerun_costs(data, None)
    print_table_header("step", f"{small['images']:,} images", f"{full['images']:,} images", "per image (small / all)",
                       f"extrapolated to {COCO_IMAGES:,} images", align="lrrrr")
    for key, what in (("split", "read + check the split list (VOCDataset.split)"),
                      ("labels", "labels of every image (labels.json + vectors)"),
                      ("todo", "skip finished images (per_image.todo)")):
        ps, pf = small[key] / small["images"], full[key] / full["images"]
        print(f"| {what} | {small[key]:.3f} s | {full[key]:.3f} s | {1e6 * ps:.1f} / {1e6 * pf:.1f} µs | "
              f"{pf * COCO_IMAGES:.1f} s |")

    print("\n### Memory (fresh process each; peak RSS growth during the call over the RSS before it)\n")
    print_table_header("call", "images", "RSS before", "peak growth", "time", align="lrrrr")
    for kind, split, what in (("loop", "train", "per-image loop (for_each_image, one PNG per image)"),
                              ("eval", "val", "evaluation (evaluate_folder)")):
        for count in (args.small, 10**9):
            r = measure(kind, data, split, count, work)
            print(f"| {what} | {r['images']:,} | {r['before_mib']:.0f} MiB | {r['growth_mib']:.1f} MiB | "
                  f"{r['seconds']:.1f} s |")
    print(f"\nLoad average at end: {load_average():.2f}.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; ``--quick`` runs single-threaded (see ``_bench.run_main``)."""
    return run_main(_main, argv)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        print(json.dumps(child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])))
        sys.exit(0)
    sys.exit(main())
