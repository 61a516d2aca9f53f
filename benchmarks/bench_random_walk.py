"""Benchmark: dense (original) vs sparse random walk, time and peak memory, label agreement,
for both walks: PSA's (stride-8 grid, AffinityNet's pair affinities, beta 8, 2^8 steps) and
IRN's (stride-4 grid, affinities from a class-boundary map, beta 10, 2^8 steps).

Usage: python benchmarks/bench_random_walk.py [--repeats 3] [--dense-max-seconds 900]
                                              [--dense-max-gb 8] [--grids 32,64,128,256]
                                              [--walks psa,irn] [--threads 1,2]

Prints a markdown table. Dense and sparse run at the same torch thread count on each row
(``--threads``: every count for the VOC-size rows, the first for the square grids). Every
(walk, method, grid, threads) case runs in its own subprocess so that peak memory is the
child's ru_maxrss growth over a baseline taken after imports, loading the inputs (built by the
parent and saved to .npy) and a warm-up; torch allocations are invisible to tracemalloc. The
whole-process peak is printed too: freed memory that malloc keeps can hide part of a small
walk's growth. Label agreement compares the labels the stages make after the walk (PSA:
argmax after the 8x bilinear upsampling; IRN: ``boundary.semantic_label`` after the 4x
upsampling, background threshold 0.25), computed after the peak is read.

Inputs are synthetic scenes on the grid: Voronoi regions with one class each or background.
PSA: affinities from one-hot region features (low across region borders), CAMs covering about
half of each object, and background (1 - max)^16 as an extra channel. IRN: a boundary map of
1 on the region borders (0.05 elsewhere, with noise) and the same CAMs without a background
channel (IRN thresholds the walked maps instead). The dense walk is skipped where its three
n x n float32 matrices would exceed --dense-max-gb, or where its time, extrapolated as n^3 from
the largest grid measured with that walk and thread count, would exceed --dense-max-seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from affinitynet.algorithms.affinity import affinity_from_features, dense_affinity  # noqa: E402
from affinitynet.algorithms.boundary import boundary_walk, semantic_label, upsample_walk  # noqa: E402
from affinitynet.algorithms.random_walk import (background_score, random_walk,  # noqa: E402
                                                random_walk_dense)
from affinitynet.config import RandomWalkConfig  # noqa: E402

_walk = RandomWalkConfig()  # the paper's random-walk settings
ALPHA, BETA, LOGT, RADIUS = _walk.alpha, _walk.beta, _walk.logt, _walk.radius
# IRN's run_sample.py: beta 10, exp_times 8, radius 5, sem_seg_bg_thres 0.25, stride 4
IRN_BETA, IRN_EXP_TIMES, IRN_RADIUS, IRN_BG_THRESHOLD, IRN_STRIDE = 10, 8, 5, 0.25, 4


def scene(height: int, width: int, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi regions on an h x w grid: (region (h, w) int, cams (num_classes, h, w) float32)."""
    rng = np.random.default_rng(seed)
    n_regions = max(2 * num_classes, 6)
    seeds = rng.uniform([0, 0], [height, width], size=(n_regions, 2))
    yy, xx = np.mgrid[:height, :width]
    dist = np.hypot(yy[..., None] - seeds[:, 0], xx[..., None] - seeds[:, 1])
    region = dist.argmin(-1)
    # every class owns at least one region; the rest are background (class -1)
    region_class = np.full(n_regions, -1)
    region_class[:num_classes] = np.arange(num_classes)
    region_class[num_classes:] = rng.integers(-1, num_classes, n_regions - num_classes)
    cams = np.zeros((num_classes, height, width), np.float32)
    for r, c in enumerate(region_class):
        inside = region == r
        if c < 0 or not inside.any():  # background, or a region no cell is nearest to
            continue
        # a cue on the part of the object nearest its centre, about half of it
        near = dist[..., r] <= np.median(dist[..., r][inside])
        cams[c][inside & near] = 1.0
        cams[c][inside & ~near] = np.maximum(cams[c][inside & ~near], 0.2)
    return region, cams


def make_case(height: int, width: int, num_classes: int, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """PSA's inputs: cams (num_classes + 1, h, w) with background first, and pair affinities
    (34, n_from), both float32."""
    region, cams = scene(height, width, num_classes, seed)
    rng = np.random.default_rng(seed + 1)
    features = np.eye(region.max() + 1, dtype=np.float32)[region].transpose(2, 0, 1) * 3
    features += 0.05 * rng.standard_normal(features.shape).astype(np.float32)
    aff = affinity_from_features(torch.from_numpy(features)[None], RADIUS)[0]
    cams_t = torch.from_numpy(cams)
    return torch.cat([background_score(cams_t, ALPHA)[None], cams_t]), aff


def make_irn_case(height: int, width: int, num_classes: int, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """IRN's inputs: cams (num_classes, h, w) and a boundary map (h, w) in [0, 1], float32."""
    region, cams = scene(height, width, num_classes, seed)
    rng = np.random.default_rng(seed + 1)
    border = np.zeros(region.shape, bool)
    border[1:] |= region[1:] != region[:-1]
    border[:, 1:] |= region[:, 1:] != region[:, :-1]
    edge = np.where(border, 1.0, 0.05) + 0.02 * rng.standard_normal(region.shape)
    return torch.from_numpy(cams), torch.from_numpy(np.clip(edge, 0, 1).astype(np.float32))


def upsampled_label(scores: torch.Tensor) -> np.ndarray:
    up = F.interpolate(scores[None].float(), scale_factor=8, mode="bilinear", align_corners=False)
    return up[0].argmax(0).numpy().astype(np.uint8)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mb()


def psa_walk(method: str, cams: torch.Tensor, aff: torch.Tensor) -> np.ndarray:
    """PSA's walk, dense or sparse, -> the label after 8x upsampling."""
    k, height, width = cams.shape
    if method == "sparse":
        return random_walk(cams, aff, height, width, BETA, LOGT, RADIUS)
    return random_walk_dense(cams.reshape(k, -1), dense_affinity(aff, height, width, RADIUS),
                             BETA, LOGT).reshape(k, height, width)


def irn_walk(method: str, cams: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    return boundary_walk(cams, edge, IRN_BETA, IRN_EXP_TIMES, IRN_RADIUS, method)


def walk_label(walk: str, scores: torch.Tensor) -> np.ndarray:
    """The label a stage makes from the walked scores."""
    if walk == "psa":
        up = F.interpolate(scores[None].float(), scale_factor=8, mode="bilinear", align_corners=False)
        return up[0].argmax(0).numpy().astype(np.uint8)
    image_hw = (scores.shape[1] * IRN_STRIDE, scores.shape[2] * IRN_STRIDE)
    keys = np.arange(scores.shape[0])
    return semantic_label(upsample_walk(scores, image_hw, IRN_STRIDE), keys, IRN_BG_THRESHOLD)


def child(walk: str, method: str, repeats: int, threads: int, case_dir: str) -> None:
    # inputs come from files so that building them does not raise the baseline peak
    cams = torch.from_numpy(np.load(f"{case_dir}/cams.npy"))
    other = torch.from_numpy(np.load(f"{case_dir}/other.npy"))  # PSA: pair affinities; IRN: boundary map
    torch.set_num_threads(threads)
    # the dense matrix powers fill with subnormal numbers, which x86 CPUs compute far more slowly
    # (IRN's VOC row did not finish in 45 min with 1 thread; flushed: 106 s with 2); flushed to
    # zero for both methods so that the rows compare the algorithms
    torch.set_flush_denormal(True)
    run = psa_walk if walk == "psa" else irn_walk
    # warm-up on a tiny grid so thread pools and kernels are loaded before the baseline
    small = make_case(12, 12, 1) if walk == "psa" else make_irn_case(12, 12, 1)
    for m in ("sparse", "dense"):
        run(m, *small)
    base = current_rss_mb()
    times = []
    for _ in range(repeats if method == "sparse" else 1):
        start = time.perf_counter()
        scores = run(method, cams, other)
        times.append(time.perf_counter() - start)
    peak = peak_rss_mb()  # read before the upsampling, which is not part of the walk
    np.save(f"{case_dir}/label_{method}.npy", walk_label(walk, scores))
    print(json.dumps({"time_s": float(np.median(times)), "peak_mb": max(peak - base, 0.0),
                      "abs_peak_mb": peak}))


def run_child(walk: str, method: str, repeats: int, threads: int, case_dir: str) -> dict:
    cmd = [sys.executable, __file__, "--child", walk, method, str(repeats), str(threads), case_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_time(t: float) -> str:
    return f"{t * 1000:.0f} ms" if t < 1 else f"{t:.2f} s"


def fmt_memory(r: dict) -> str:
    return f"{r['peak_mb']:.0f} MB ({r['abs_peak_mb']:.0f})" if "peak_mb" in r else "n/a"


def cases(walks: list[str], grids: list[int], threads: list[int], voc_rows: bool = True,
          classes: tuple[int, ...] = (2, 20)) -> list[dict]:
    """The rows: VOC-size grids (a 500 x 375 image) with each count of present ``classes`` at
    every thread count; square grids with 20 classes at the first thread count."""
    voc = {"psa": (47, 63, "VOC 500x375, stride 8"), "irn": (94, 125, "VOC 500x375, stride 4")}
    rows = []
    for walk in walks:
        h, w, name = voc[walk]
        rows += [{"walk": walk, "h": h, "w": w, "classes": k, "threads": t, "name": name}
                 for k in classes for t in threads if voc_rows]
        stride = 8 if walk == "psa" else IRN_STRIDE
        rows += [{"walk": walk, "h": g, "w": g, "classes": 20, "threads": threads[0],
                  "name": f"{g * stride}x{g * stride} image, stride {stride}"} for g in grids]
    return rows


def dense_plan(row: dict, reference: dict, max_gb: float, max_seconds: float) -> str:
    """Why the dense walk of ``row`` is skipped ("" to run it)."""
    n = row["h"] * row["w"]
    need_gb = 3 * n * n * 4 / 1e9
    ref = reference.get((row["walk"], row["threads"]))
    est = ref[1] * (n / ref[0]) ** 3 if ref else 0.0
    if need_gb > max_gb:
        return f"n/a (needs {need_gb:.1f} GB)"
    if est > max_seconds:
        return f"n/a (est. {est / 60:.0f} min, {need_gb:.1f} GB)"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help="sparse runs per case (median)")
    parser.add_argument("--dense-max-seconds", type=float, default=900.0)
    parser.add_argument("--dense-max-gb", type=float, default=8.0)
    parser.add_argument("--grids", default="32,64,128,256", help="square grid sides")
    parser.add_argument("--walks", default="psa,irn")
    parser.add_argument("--threads", default="1,2", help="torch thread counts (dense and sparse alike)")
    parser.add_argument("--quick", action="store_true", help="only the square grids (a smoke test)")
    parser.add_argument("--classes", default="2,20", help="present classes of the VOC-size rows")
    args = parser.parse_args(argv)
    if args.child:
        walk, method, rep, threads, case_dir = args.child
        child(walk, method, int(rep), int(threads), case_dir)
        return 0

    threads = [int(t) for t in args.threads.split(",")]
    grids = [int(g) for g in args.grids.split(",") if g]
    print(f"PSA walk: beta={BETA} logt={LOGT} (2^{LOGT} steps), radius {RADIUS}; IRN walk: beta={IRN_BETA} "
          f"exp_times={IRN_EXP_TIMES} (2^{IRN_EXP_TIMES} steps), radius {IRN_RADIUS}; float32, torch "
          f"{torch.__version__}, {os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}\n")
    print("Peak memory: growth of peak RSS over the RSS before the walk (whole-process peak "
          "RSS in MB, python + torch included, in brackets). Channels: the maps walked (PSA: classes "
          "+ background; IRN: classes).\n")
    print("| walk | case | grid h x w (n) | channels | threads | dense time | dense peak | sparse time | "
          "sparse peak | speedup | label agreement |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    reference: dict = {}  # (walk, threads) -> (n, seconds) of the largest dense run
    with tempfile.TemporaryDirectory() as tmp:
        for row in cases(args.walks.split(","), grids, threads, not args.quick,
                         tuple(int(k) for k in args.classes.split(","))):
            walk, h, w, k, t = row["walk"], row["h"], row["w"], row["classes"], row["threads"]
            cams, other = make_case(h, w, k) if walk == "psa" else make_irn_case(h, w, k)
            np.save(f"{tmp}/cams.npy", cams.numpy())
            np.save(f"{tmp}/other.npy", other.numpy())
            sparse = run_child(walk, "sparse", args.repeats, t, tmp)
            skip = dense_plan(row, reference, args.dense_max_gb, args.dense_max_seconds)
            dense = {"skip": skip} if skip else run_child(walk, "dense", 1, t, tmp)
            n = h * w
            if "time_s" in dense and n > reference.get((walk, t), (0, 0))[0]:
                reference[(walk, t)] = (n, dense["time_s"])
            if "time_s" in dense and "time_s" in sparse:
                agree = float((np.load(f"{tmp}/label_sparse.npy") == np.load(f"{tmp}/label_dense.npy")).mean())
                speed, agree_s = f"{dense['time_s'] / sparse['time_s']:.0f}x", f"{100 * agree:.3f} %"
            else:
                speed, agree_s = "n/a", "n/a"
            d_time = fmt_time(dense["time_s"]) if "time_s" in dense else dense.get("skip", dense.get("error"))
            s_time = fmt_time(sparse["time_s"]) if "time_s" in sparse else sparse["error"]
            print(f"| {walk} | {row['name']} | {h} x {w} ({n}) | {cams.shape[0]} | {t} | {d_time} | "
                  f"{fmt_memory(dense)} | {s_time} | {fmt_memory(sparse)} | {speed} | {agree_s} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
