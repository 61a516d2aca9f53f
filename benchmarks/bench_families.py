"""The CPU recipe (configs/demo.yaml) on datasets of different kinds: CAM vs random walk vs
segmentation net on each family's val split, with the recipe as shipped and, for comparison,
with the images used at their native size and the paper's walk (the recipe before
``dataset.long_side``).

Families: ``shapes`` (the first synthetic family, 200-320 px), ``clutter`` (the second, 96-640
px, cluttered), and ``small`` (the shapes family shrunk to 110-176 px: the kind of unseen data
on which the walk once made the labels worse). Each run is ``affinitynet demo``'s: 200 train
and 50 val images of seed 0, about 3-4 minutes on 2 cores.

    python benchmarks/bench_families.py                 # every family, both recipes (~25 min)
    python benchmarks/bench_families.py --families clutter --recipes demo
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from affinitynet import pipeline  # noqa: E402
from affinitynet.errors import AffinityNetError  # noqa: E402
from _bench import machine, print_table_header, run_main  # noqa: E402

FAMILIES = {"shapes": {"family": "shapes"}, "clutter": {"family": "clutter"},
            "small": {"family": "shapes", "scale": 0.55}}
# the recipe before the working size: native sizes, the paper's walk and training settings
RECIPES = {"demo": [], "native": ["dataset.long_side=0", "random_walk.alpha=16", "random_walk.logt=8",
                                  "train_cam.lr=0.1", "train_cam.momentum=0.0005", "train_aff.lr=0.1",
                                  "train_aff.momentum=0.0005", "train_aff.epochs=6"]}


def run_one(family: str, recipe: str, workdir: Path, data: dict, quick: bool) -> dict:
    sets = list(RECIPES[recipe])
    if quick:  # a smoke test: a few images and steps
        sets += ["train_cam.epochs=1", "train_aff.epochs=1", "train_seg.epochs=1", "aff_labels.processes=1"]
    start = time.time()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        metrics = pipeline.demo(workdir, sets=sets, device="cpu", data={**data, **FAMILIES[family]})
    return {"cam": metrics["make_cam"]["miou"], "rw": metrics["random_walk"]["miou"], "seg": metrics["segment"]["miou"],
            "warnings": sum(len(m.get("warnings", [])) for m in metrics.values() if isinstance(m, dict)),
            "seconds": time.time() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--quick", action="store_true", help="smoke test: 8 + 6 images, 1 epoch each")
    args = parser.parse_args(argv)
    data = {"train": 8, "val": 6} if args.quick else {"train": 200, "val": 50}
    print(f"Machine: {machine()}")
    print_table_header("family", "recipe", "CAM mIoU", "random walk mIoU", "RW - CAM", "seg net mIoU",
                       "warnings", "seconds", align="llrrrrrr")
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            for recipe in args.recipes.split(","):
                try:
                    r = run_one(family, recipe, Path(tmp) / f"{family}_{recipe}", data, args.quick)
                except AffinityNetError as exc:  # e.g. images too small for the walk at their native size
                    print(f"| {family} | {recipe} | stopped: {str(exc).split(': ', 1)[-1]} | | | | | |", flush=True)
                    continue
                print(f"| {family} | {recipe} | {r['cam']:.1f} | {r['rw']:.1f} | {r['rw'] - r['cam']:+.1f} | "
                      f"{r['seg']:.1f} | {r['warnings']} | {r['seconds']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
