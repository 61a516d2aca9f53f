"""Benchmark: dense (original) vs sparse random walk, time and peak memory, label agreement.

Usage: python benchmarks/bench_random_walk.py [--repeats 3] [--dense-max-seconds 120]
                                              [--dense-max-gb 4] [--grids 32,64,128,256]

Prints a markdown table. Every (method, grid) case runs in its own subprocess so that peak
memory is the child's ru_maxrss growth over a baseline taken after imports, loading the inputs
(built by the parent and saved to .npy) and a warm-up; torch allocations are invisible to
tracemalloc. The whole-process peak is printed too: freed memory that malloc keeps can hide
part of a small walk's growth. The 8x upsampling for label agreement happens after the peak is read. Inputs are synthetic scenes on the
stride-8 grid: Voronoi regions with one class each or background, affinities from one-hot
region features (low across region borders), CAMs covering about half of each object, and
background (1 - max)^16. Label agreement compares the argmax after the 8x bilinear
upsampling that pseudo labels use. The dense walk is skipped where its three n x n float32
matrices would exceed --dense-max-gb, or where its time, extrapolated as n^3 from the largest
grid measured, would exceed --dense-max-seconds.
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
from affinitynet.algorithms.random_walk import (background_score, random_walk,  # noqa: E402
                                                random_walk_dense)
from affinitynet.config import RandomWalkConfig  # noqa: E402

_walk = RandomWalkConfig()  # the paper's random-walk settings
ALPHA, BETA, LOGT, RADIUS = _walk.alpha, _walk.beta, _walk.logt, _walk.radius


def make_case(height: int, width: int, num_classes: int, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic stride-8 inputs: cams (num_classes + 1, h, w) with background first, and
    pair affinities (34, n_from), both float32."""
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
    features = np.eye(n_regions, dtype=np.float32)[region].transpose(2, 0, 1) * 3
    features += 0.05 * rng.standard_normal(features.shape).astype(np.float32)
    aff = affinity_from_features(torch.from_numpy(features)[None], RADIUS)[0]
    cams = np.zeros((num_classes, height, width), np.float32)
    for r, c in enumerate(region_class):
        if c < 0:
            continue
        inside = region == r
        # a cue on the part of the object nearest its centre, about half of it
        near = dist[..., r] <= np.median(dist[..., r][inside])
        cams[c][inside & near] = 1.0
        cams[c][inside & ~near] = np.maximum(cams[c][inside & ~near], 0.2)
    cams_t = torch.from_numpy(cams)
    return torch.cat([background_score(cams_t, ALPHA)[None], cams_t]), aff


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


def child(method: str, height: int, width: int, repeats: int, case_dir: str) -> None:
    # inputs come from files so that building them does not raise the baseline peak
    cams = torch.from_numpy(np.load(f"{case_dir}/cams.npy"))
    aff = torch.from_numpy(np.load(f"{case_dir}/aff.npy"))
    k = cams.shape[0]
    if method == "sparse":
        torch.set_num_threads(1)  # as the random-walk stage runs it (256 short steps)
    # warm-up on a tiny grid so thread pools and kernels are loaded before the baseline
    small_cams, small_aff = make_case(12, 12, 1)
    random_walk(small_cams, small_aff, 12, 12, BETA, LOGT, RADIUS)
    random_walk_dense(small_cams.reshape(2, -1), dense_affinity(small_aff, 12, 12, RADIUS), BETA, LOGT)
    base = current_rss_mb()
    times = []
    for _ in range(repeats if method == "sparse" else 1):
        start = time.perf_counter()
        if method == "sparse":
            scores = random_walk(cams, aff, height, width, BETA, LOGT, RADIUS)
        else:
            dense = dense_affinity(aff, height, width, RADIUS)
            scores = random_walk_dense(cams.reshape(k, -1), dense, BETA, LOGT)
            scores = scores.reshape(k, height, width)
            del dense
        times.append(time.perf_counter() - start)
    peak = peak_rss_mb()  # read before the upsampling, which is not part of the walk
    np.save(f"{case_dir}/label_{method}.npy", upsampled_label(scores))
    print(json.dumps({"time_s": float(np.median(times)), "peak_mb": max(peak - base, 0.0),
                      "abs_peak_mb": peak}))


def run_child(method: str, height: int, width: int, repeats: int, case_dir: str) -> dict:
    cmd = [sys.executable, __file__, "--child", method, str(height), str(width), str(repeats),
           case_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_time(t: float) -> str:
    return f"{t * 1000:.0f} ms" if t < 1 else f"{t:.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help="sparse runs per case (median)")
    parser.add_argument("--dense-max-seconds", type=float, default=120.0)
    parser.add_argument("--dense-max-gb", type=float, default=4.0)
    parser.add_argument("--grids", default="32,64,128,256", help="square grid sides")
    args = parser.parse_args(argv)
    if args.child:
        method, h, w, rep, case_dir = args.child
        child(method, int(h), int(w), int(rep), case_dir)
        return 0

    cases = [(47, 63, 20, "VOC 500x375, 20 classes"), (47, 63, 2, "VOC 500x375, 2 present")]
    cases += [(s, s, 20, f"{s}x{s}, 20 classes") for s in map(int, args.grids.split(","))]
    print(f"random walk beta={BETA} logt={LOGT} (2^{LOGT} steps), float32, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average at start "
          f"{os.getloadavg()[0]:.1f}; sparse runs single-threaded (default), dense with "
          f"{torch.get_num_threads()} threads\n")
    print("Peak memory: growth of peak RSS over the RSS before the walk (whole-process peak "
          "RSS in MB, python + torch included, in brackets).\n")
    print("| case | grid h x w (n) | channels | dense time | dense peak | sparse time | "
          "sparse peak | speedup | label agreement |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = {}
    dense_ref: tuple[int, float] | None = None  # (n, seconds) of the largest dense run
    with tempfile.TemporaryDirectory() as tmp:
        for h, w, k, name in cases:
            n = h * w
            cams, aff = make_case(h, w, k)
            np.save(f"{tmp}/cams.npy", cams.numpy())
            np.save(f"{tmp}/aff.npy", aff.numpy())
            sparse = run_child("sparse", h, w, args.repeats, tmp)
            need_gb = 3 * n * n * 4 / 1e9
            est = dense_ref[1] * (n / dense_ref[0]) ** 3 if dense_ref else 0.0
            if need_gb > args.dense_max_gb:
                dense = {"skip": f"n/a (needs {need_gb:.1f} GB)"}
            elif est > args.dense_max_seconds:
                dense = {"skip": f"n/a (est. {est / 60:.0f} min, {need_gb:.1f} GB)"}
            else:
                dense = run_child("dense", h, w, 1, tmp)
                if "time_s" in dense and (dense_ref is None or n > dense_ref[0]):
                    dense_ref = (n, dense["time_s"])
            if "time_s" in dense and "time_s" in sparse:
                agree = float((np.load(f"{tmp}/label_sparse.npy")
                               == np.load(f"{tmp}/label_dense.npy")).mean())
                speed = f"{dense['time_s'] / sparse['time_s']:.0f}x"
                agree_s = f"{100 * agree:.3f} %"
            else:
                speed, agree_s = "n/a", "n/a"
            d_time = fmt_time(dense["time_s"]) if "time_s" in dense else dense.get(
                "skip", dense.get("error"))
            d_mem = (f"{dense['peak_mb']:.0f} MB ({dense['abs_peak_mb']:.0f})"
                     if "peak_mb" in dense else "n/a")
            s_time = fmt_time(sparse["time_s"]) if "time_s" in sparse else sparse["error"]
            s_mem = (f"{sparse['peak_mb']:.0f} MB ({sparse['abs_peak_mb']:.0f})"
                     if "peak_mb" in sparse else "n/a")
            print(f"| {name} | {h} x {w} ({n}) | {k + 1} | {d_time} | {d_mem} | {s_time} | "
                  f"{s_mem} | {speed} | {agree_s} |", flush=True)
            results[(h, w, k)] = (dense, sparse)

    print("\nTargets:")
    for k in (20, 2):
        dense, sparse = results[(47, 63, k)]
        ok_speed = "time_s" in dense and dense["time_s"] / sparse["time_s"] >= 50
        print(f"- VOC, {k + 1} channels: sparse >= 50x faster than dense: "
              f"{'met' if ok_speed else 'NOT met'}; sparse < 0.1 s/image "
              f"({fmt_time(sparse['time_s'])}): {'met' if sparse['time_s'] < 0.1 else 'NOT met'}")
    if (128, 128, 20) in results:
        sparse = results[(128, 128, 20)][1]
        if "time_s" in sparse:
            ok = sparse["time_s"] < 30 and sparse["abs_peak_mb"] < 1024
            print(f"- 128x128 grid, 21 channels: < 30 s and < 1 GB peak, whole process "
                  f"({fmt_time(sparse['time_s'])}, {sparse['abs_peak_mb']:.0f} MB): "
                  f"{'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
