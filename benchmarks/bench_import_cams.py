"""CAMs from elsewhere: ``import-cams`` round trips and the random walk on CAMs of other quality.

1. The demo recipe (configs/demo.yaml) runs on the demo's synthetic data; its CAMs are exported
   in each format (``export-labels --cams``), imported into a copy of the work folder, and
   compared file by file with the originals; ``run`` then must find every stage up to date.
2. CAMs of another quality than ours (each class's ground-truth mask blurred, sigma = blur x the
   long side: ``data.synthetic.blurred_truth_cams``, saved as ``npz`` files) are imported into a
   fresh work folder, and ``run`` continues from make-aff-labels with the same recipe: CAM mIoU
   against random-walk mIoU on the val split.

    python benchmarks/bench_import_cams.py              # 200 + 50 images, 3 blur levels (~25 min on 2 cores)
    python benchmarks/bench_import_cams.py --quick      # smoke test: 8 + 6 images, 1 epoch each
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from affinitynet import pipeline  # noqa: E402
from affinitynet.config import (CAM_EXCHANGE_FORMATS, ExportLabelsConfig, ImportCamsConfig, RunConfig,  # noqa: E402
                                load_config)
from affinitynet.data.synthetic import blurred_truth_cams  # noqa: E402
from affinitynet.data.voc import VOCDataset  # noqa: E402
from affinitynet.stages import export_labels  # noqa: E402
from _bench import machine, print_table_header, quiet, run_main  # noqa: E402

BLURS = (0.03, 0.06, 0.12)
DOWNSTREAM = ("crf", "aff_labels", "affinity", "pseudo_labels", "segmentation", "seg_pred")  # folders after make-cam
QUICK_SETS = ["train_cam.epochs=1", "train_aff.epochs=1", "train_seg.epochs=1", "aff_labels.processes=1"]


def output_times(work: Path) -> dict[str, int]:
    """Modification times of the files the stages after make-cam write, by path in ``work``."""
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for folder in DOWNSTREAM
            for p in (work / folder).rglob("*") if p.is_file()}


def round_trip(ours: Path, tmp: Path, fmt: str, sets: list[str]) -> dict:
    """Export our CAMs as ``fmt``, import them into a copy of the work folder: equal files, and
    stages redone by the next ``run``."""
    exported, copy = tmp / f"export_{fmt}", tmp / f"copy_{fmt}"
    quiet(export_labels.run, ExportLabelsConfig(workdir=str(ours), out=str(exported), labels="", cams=fmt))
    shutil.copytree(ours, copy)
    cfg = load_config(RunConfig, "demo", sets, values={
        "workdir": str(copy), "dataset": {"root": str(ours / "data")}, "device": "cpu"})
    start = time.time()
    result = quiet(pipeline.import_cams, cfg, ImportCamsConfig(source=str(exported / "cams"), format=fmt,
                                                               trust_pickle=True))
    seconds = time.time() - start
    names = sorted(p.name for p in (ours / "cam").glob("*.npz"))
    equal = sum((ours / "cam" / n).read_bytes() == (copy / "cam" / n).read_bytes() for n in names)
    before = output_times(copy)
    quiet(pipeline.run, cfg)
    after = output_times(copy)
    redone = sorted({path.split("/")[0] for path in after if after[path] != before.get(path)})
    return {"files": len(names), "equal": equal, "seconds": seconds, "images": result["import"]["images"],
            "redone": redone}


def blurred_run(ours: Path, tmp: Path, blur: float, sets: list[str]) -> dict:
    """Blurred ground-truth CAMs imported into a fresh work folder, then ``run``."""
    voc = VOCDataset(ours / "data")
    source, work = tmp / f"blur_{blur}", tmp / f"work_blur_{blur}"
    source.mkdir()
    for name in voc.split("train") + voc.split("val"):
        keys, maps = blurred_truth_cams(voc, name, blur=blur)
        np.savez_compressed(source / f"{name}.npz", keys=keys, maps=maps)
    cfg = load_config(RunConfig, "demo", sets, values={
        "workdir": str(work), "dataset": {"root": str(ours / "data")}, "device": "cpu"})
    start = time.time()
    quiet(pipeline.import_cams, cfg, ImportCamsConfig(source=str(source), format="npz"))
    metrics = quiet(pipeline.run, cfg)
    return {"cam": metrics["make_cam"]["miou"], "rw": metrics["random_walk"]["miou"],
            "seg": metrics["segment"]["miou"], "seconds": time.time() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 8 + 6 images, 1 epoch each")
    parser.add_argument("--formats", default=",".join(CAM_EXCHANGE_FORMATS))
    parser.add_argument("--blurs", default=",".join(map(str, BLURS)))
    args = parser.parse_args(argv)
    data = {"train": 8, "val": 6} if args.quick else {"train": 200, "val": 50}
    sets = QUICK_SETS if args.quick else []
    print(f"Machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ours = tmp / "ours"
        start = time.time()
        metrics = quiet(pipeline.demo, ours, sets=sets, device="cpu", data=data)
        print(f"\ndemo recipe, {data['train']} train + {data['val']} val images, {time.time() - start:.0f} s\n")
        print_table_header("format", "CAM files equal after export + import", "import seconds",
                           "outputs after make-cam redone by the next run", align="lrrl")
        for fmt in args.formats.split(","):
            r = round_trip(ours, tmp, fmt, sets)
            print(f"| {fmt} | {r['equal']} of {r['files']} | {r['seconds']:.1f} | {', '.join(r['redone']) or 'none'} |",
                  flush=True)
        print()
        print_table_header("CAMs", "CAM mIoU", "random walk mIoU", "RW - CAM", "seg net mIoU", "seconds",
                           align="lrrrrr")
        print(f"| ours (demo classifier) | {metrics['make_cam']['miou']:.1f} | {metrics['random_walk']['miou']:.1f} | "
              f"{metrics['random_walk']['miou'] - metrics['make_cam']['miou']:+.1f} | {metrics['segment']['miou']:.1f} "
              "| |", flush=True)
        for blur in map(float, args.blurs.split(",")):
            r = blurred_run(ours, tmp, blur, sets)
            print(f"| blurred ground truth, blur {blur} | {r['cam']:.1f} | {r['rw']:.1f} | {r['rw'] - r['cam']:+.1f} | "
                  f"{r['seg']:.1f} | {r['seconds']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
