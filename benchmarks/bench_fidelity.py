"""Benchmark: how far each arithmetic difference from the original code moves the numbers.

Usage: python benchmarks/bench_fidelity.py [--crops 40] [--scenes 12] [--quick]

Side by side in one process, on the real photos of the parity data (``tests/data/golden``,
``cam_crf_*``: their CAMs and the paper's CRF) and on synthetic scenes of the demo's family at its
256 px working size (CAMs: each object's mask, blurred):

- AffinityNet's training cells: the confident-label rule on random crops (crop 448 at VOC
  size, 224 for the scenes, random flip) from the CRF scores kept in float32 (the original) vs
  float16 (our score files); and the former rule of this package (per pixel at full resolution,
  then each cell's centre) vs the original's (8x8 block average of the crop's scores, then the
  rule). Cells compared: all cells of the crops.
- The random long-side resize of train-cam (long side 256-512): Pillow bicubic on the PIL image
  (the original's ``RandomResizeLong``) vs torchvision's bicubic with antialias on the tensor
  (ours), in grey levels.
- Colour jitter (0.3, 0.3, 0.3, 0.1): torchvision's ``ColorJitter`` on the PIL image (the
  original's) vs the same factors through our tensor path, in grey levels.

Prints one markdown table (README "Differences from the original code" quotes it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TFv1
from torchvision.transforms.v2 import functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench, also when loaded by path

from affinitynet.algorithms.crf import confident_labels, crf_with_background  # noqa: E402
from affinitynet.algorithms.resize import working_image  # noqa: E402
from affinitynet.data.synthetic import make_sample  # noqa: E402
from affinitynet.data.transforms import crop_to_canvas, long_side_size, random_crop_box  # noqa: E402
from _bench import machine, print_table_header, run_main  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden"
ALPHAS = (4.0, 32.0)  # the paper's low and high background power


def cams_from_label(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """keys (k,), maps (k, H, W) in [0, 1]: each present class's mask, blurred, / its max."""
    keys = np.array([c - 1 for c in np.unique(label) if 0 < c < 255], np.int64)
    sigma = 0.03 * max(label.shape)
    maps = np.stack([ndimage.gaussian_filter((label == k + 1).astype(np.float32), sigma) for k in keys])
    return keys, maps / (maps.max(axis=(1, 2), keepdims=True) + 1e-5)


def cases(scenes: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, int]]:
    """(source, image, low, high, crop): the CRF scores of both alphas in float32."""
    out = []
    for path in sorted(GOLDEN.glob("cam_crf_*.npz")):
        g = np.load(path)
        out.append(("photos (VOC, 3 images)", g["image"], g["crf_la_maps"], g["crf_ha_maps"], 448))
    for i in range(scenes):
        s = make_sample(0, "train", i)
        image = working_image(s.image, 256)
        label = np.asarray(Image.fromarray(s.label).resize(image.shape[1::-1], Image.NEAREST))
        _, maps = cams_from_label(label)
        low, high = (crf_with_background(image, maps, a, 10) for a in ALPHAS)
        out.append((f"synthetic scenes at 256 px ({scenes})", image, low, high, 224))
    return out


def cell_rows(crops: int, scenes: int) -> dict[str, dict[str, float]]:
    """Per source: % of training cells that change (float16 scores; the former per-pixel rule)."""
    gen = torch.Generator().manual_seed(0)
    counts: dict[str, np.ndarray] = {}
    for source, image, low, high, crop in cases(scenes):
        height, width = image.shape[:2]
        full = confident_labels(low, high)  # the former rule: per pixel at full resolution
        for _ in range(crops):
            box = random_crop_box(height, width, crop, gen)
            flip = bool(torch.rand((), generator=gen) < 0.5)

            def crop_of(maps: np.ndarray, fill: float = 0.0) -> np.ndarray:
                out = crop_to_canvas(torch.from_numpy(np.ascontiguousarray(maps)), box, crop, fill).numpy()
                return out[..., ::-1] if flip else out

            exact = confident_labels(crop_of(low), crop_of(high), stride=8)
            half = confident_labels(crop_of(low.astype(np.float16).astype(np.float32)),
                                    crop_of(high.astype(np.float16).astype(np.float32)), stride=8)
            former = crop_of(full[None], 255)[0][4::8, 4::8]
            c = counts.setdefault(source, np.zeros(3))
            c += (exact.size, (half != exact).sum(), (former != exact).sum())
    return {source: {"cells": c[0], "float16": c[1], "former": c[2]} for source, c in counts.items()}


def resize_and_jitter(repeats: int) -> dict[str, tuple[float, float]]:
    """Mean and max |difference| in grey levels: resize (Pillow vs torchvision), jitter (PIL vs tensor)."""
    rng = np.random.default_rng(0)
    resize, jitter = [], []
    for path in sorted(GOLDEN.glob("cam_crf_*.npz")):
        image = np.load(path)["image"]
        pil, tensor = Image.fromarray(image), torch.from_numpy(image).permute(2, 0, 1)
        for _ in range(repeats):
            h, w = long_side_size(*image.shape[:2], int(rng.integers(256, 513)))
            original = np.asarray(pil.resize((w, h), Image.BICUBIC), np.int16)
            ours = TF.resize(tensor, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
            resize.append(np.abs(ours.permute(1, 2, 0).numpy().astype(np.int16) - original))
            b, c, s = rng.uniform(0.7, 1.3, 3)
            hue = rng.uniform(-0.1, 0.1)
            ops = [(TFv1.adjust_brightness, b), (TFv1.adjust_contrast, c), (TFv1.adjust_saturation, s),
                   (TFv1.adjust_hue, hue)]
            order = rng.permutation(4)
            out_pil, out_t = pil, tensor
            for k in order:
                fn, factor = ops[k]
                out_pil = fn(out_pil, factor)
                out_t = {0: TF.adjust_brightness, 1: TF.adjust_contrast, 2: TF.adjust_saturation,
                         3: TF.adjust_hue}[int(k)](out_t, factor)
            jitter.append(np.abs(out_t.permute(1, 2, 0).numpy().astype(np.int16) - np.asarray(out_pil, np.int16)))
    return {name: (float(np.mean([d.mean() for d in diffs])), float(max(d.max() for d in diffs)))
            for name, diffs in (("resize", resize), ("jitter", jitter))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=40, help="random crops per image")
    parser.add_argument("--scenes", type=int, default=12, help="synthetic scenes")
    parser.add_argument("--quick", action="store_true", help="smoke mode: 2 crops, 1 scene")
    args = parser.parse_args(argv)
    crops, scenes, repeats = (2, 1, 1) if args.quick else (args.crops, args.scenes, 8)
    print(f"Machine: {machine()}\n")
    print_table_header("what differs", "images", "compared", "changed", align="lllr")
    for source, r in cell_rows(crops, scenes).items():
        print(f"| CRF scores kept in float16 (original float32): AffinityNet training cells | {source} | "
              f"{int(r['cells'])} cells of {crops} random crops per image | {int(r['float16'])} "
              f"({100 * r['float16'] / r['cells']:.3f} %) |")
        print(f"| former rule of this package (per pixel, cell centre) vs the original's (8x8 block mean): "
              f"training cells | {source} | same cells | {int(r['former'])} ({100 * r['former'] / r['cells']:.1f} %) |")
    pixels = resize_and_jitter(repeats)
    for key, what in (("resize", "train-cam random long side 256-512: torchvision bicubic + antialias vs "
                                 "Pillow bicubic"),
                      ("jitter", "colour jitter (0.3, 0.3, 0.3, 0.1): tensor path vs PIL ColorJitter, "
                                 "same factors")):
        mean, worst = pixels[key]
        print(f"| {what} | photos (VOC, 3 images) | {3 * repeats} resized / jittered images | "
              f"mean {mean:.2f}, max {worst:.0f} grey levels |")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
