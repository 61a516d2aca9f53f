"""PSA vs IRN on the same CAMs: the CPU recipe on both synthetic families, side by side.

For each family: ``affinitynet demo --set method=irn`` (the CPU recipe, configs/demo.yaml, with
IRN's stages 2b-4), then ``run`` with ``method: psa`` on a copy of that work folder, which keeps
the classifier and the CAMs and redoes make-aff-labels, train-aff, random-walk, train-seg and
segment the PSA way; so both methods start from identical CAMs; and ``run`` with
``make_cam.fusion: irn`` on another copy (the same classifier, CAMs fused as IRN's make_cam.py,
IRN's walk from their stride-4 maps). IRN's instance pseudo labels
(random-walk writes them with method irn) are scored by the run against the generators'
``SegmentationObject`` (mask AP at IoU 0.5). Val mIoU throughout.

    python benchmarks/bench_methods.py                  # 200 + 50 images per family (~55 min on 2 cores)
    python benchmarks/bench_methods.py --quick          # smoke test: 8 + 6 images, 1 epoch each
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from affinitynet import pipeline  # noqa: E402
from affinitynet.config import RunConfig, load_config  # noqa: E402
from _bench import machine, print_table_header, quiet, run_main  # noqa: E402

QUICK_SETS = ["train_cam.epochs=1", "train_irn.epochs=1", "train_aff.epochs=1", "train_seg.epochs=1",
              "aff_labels.processes=1", "ir_labels.processes=1"]


def family_rows(family: str, tmp: Path, data: dict, sets: list[str]) -> list[str]:
    irn = tmp / f"irn_{family}"
    start = time.time()
    m_irn = quiet(pipeline.demo, irn, sets=[*sets, "method=irn"], device="cpu", data={**data, "family": family})
    runs = [("PSA (AffinityNet)", [], "psa"), ("IRN (boundaries)", None, ""),
            ("IRN, IRN's CAM fusion", ["method=irn", "make_cam.fusion=irn"], "fusion")]
    rows = []
    for method, extra_sets, folder in runs:
        if extra_sets is None:
            m, seconds = m_irn, time.time() - start
        else:  # a copy of the IRN folder: the same classifier (and, with the same fusion, CAMs)
            shutil.copytree(irn, tmp / f"{folder}_{family}")
            cfg = load_config(RunConfig, "demo", [*sets, *extra_sets],
                              values={"workdir": str(tmp / f"{folder}_{family}"),
                                      "dataset": {"root": str(irn / "data")}, "device": "cpu"})
            t0 = time.time()
            m = quiet(pipeline.run, cfg)
            seconds = time.time() - t0
        ap = m["random_walk"].get("instances")
        instances = f"{ap['map']:.1f} ({ap['num_detections']} / {ap['num_instances']})" if ap else "-"
        rows.append(f"| {family} | {method} | {m['make_cam']['miou']:.1f} | {m['aff_labels']['confident_precision']:.1f} "
                    f"/ {m['aff_labels']['confident_coverage']:.1f} | {m['random_walk']['miou']:.1f} | "
                    f"{m['random_walk']['miou'] - m['make_cam']['miou']:+.1f} | {m['segment']['miou']:.1f} | "
                    f"{instances} | {m['seconds']['train_aff']:.0f} | {seconds:.0f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 8 + 6 images, 1 epoch each")
    parser.add_argument("--families", default="shapes,clutter")
    args = parser.parse_args(argv)
    data = {"train": 8, "val": 6} if args.quick else {"train": 200, "val": 50}
    sets = QUICK_SETS if args.quick else []
    print(f"Machine: {machine()}\n\n{data['train']} train + {data['val']} val images per family, seed 0; "
          "val scores; every row on the same classifier, the first two on the same CAMs\n")
    print_table_header("family", "method", "CAM mIoU", "confident labels: precision / coverage %",
                       "pseudo label mIoU", "- CAM", "seg net mIoU", "instance mAP@0.5 (detections / objects)",
                       "train-aff s", "run s", align="llrrrrrrrr")
    with tempfile.TemporaryDirectory() as tmp_name:
        for family in args.families.split(","):
            for row in family_rows(family, Path(tmp_name), data, sets):
                print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
