"""Smoke tests of the benchmark scripts: each runs in its ``--quick`` mode and prints its table.

The scripts are imported from ``benchmarks/`` (not a package) and their ``main(argv)`` called in
this process, which is faster than a subprocess per script. Quick modes use tiny inputs, so the
numbers they print mean nothing; only that every variant runs and a table comes out is checked.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}_smoke", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """Cells of the markdown table whose header line starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    assert re.fullmatch(r"\|(-+:?\|)+", lines[start + 1].replace("---:", "---")), lines[start + 1]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_bench_crf_quick(capsys):
    from affinitynet.stages import make_aff_labels

    stage_fn = make_aff_labels.LabelJob.__call__
    assert load("bench_crf").main(["--quick"]) == 0
    assert make_aff_labels.LabelJob.__call__ is stage_fn  # the call log is removed again
    out = capsys.readouterr().out
    assert "Machine:" in out and "torch" in out
    rows = table_rows(out, "| images |")
    assert [r[2] for r in rows] == ["1", "2"]  # 1 and 2 processes on the same images
    assert all(r[-1].startswith("yes (4 calls, 4 PNGs)") for r in rows)
    assert rows[1][3] == "2"  # both workers got images


def test_bench_cam_inference_quick(capsys):
    threads = torch.get_num_threads()
    assert load("bench_cam_inference").main(["--quick"]) == 0
    assert torch.get_num_threads() == threads
    out = capsys.readouterr().out
    rows = table_rows(out, "| variant |")
    assert rows[0][0].startswith("one pass at a time") and rows[0][3] == "1.00x"
    assert any(r[0].startswith("make-cam") for r in rows[1:])
    assert all(r[-1] == "yes" for r in rows)  # fp32 forms agree within 1e-4
    if not torch.cuda.is_available():
        assert "skipped: no CUDA device" in out


def test_bench_training_quick(capsys):
    assert load("bench_training").main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out, "| stage |")
    assert [(r[0], r[2]) for r in rows] == [("train-cam (tiny)", "0"), ("train-cam (tiny)", "2"),
                                            ("train-aff (tiny)", "0"), ("train-aff (tiny)", "2")]
    assert all(float(r[5]) > 0 for r in rows)
    if not torch.cuda.is_available():
        assert "skipped: no CUDA device" in out


def test_estimate_voc_quick_reports_missing_gpu_numbers(capsys):
    est = load("estimate_voc")
    assert est.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out, "| stage |")
    by_stage = {r[0]: r for r in rows}
    assert set(by_stage) == {"train-cam", "make-cam", "make-aff-labels (CRF)", "train-aff", "random walk",
                             "train-seg", "segment (val)"}
    assert by_stage["make-aff-labels (CRF)"][2].endswith(" h")  # CPU-measured: always there
    if not torch.cuda.is_available():
        assert by_stage["make-cam"][2] == "MISSING" and "not computable" in out


def test_estimate_voc_with_gpu_times(capsys, tmp_path):
    est = load("estimate_voc")
    times = {"device": "test", "train_cam_step_s": 1.6, "make_cam_s_per_image": 0.5,
             "train_aff_step_s": 0.8, "aff_forward_s_per_image": 0.1, "train_seg_step_s": 0.9,
             "segment_s_per_image": 0.2}
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(times))
    assert est.main(["--quick", "--gpu-times", str(path), "--images", "100", "--cores", "4"]) == 0
    out = capsys.readouterr().out
    rows = {r[0]: r for r in table_rows(out, "| stage |")}
    # make-cam is N x t_make_cam exactly: 100 x 0.5 s
    assert rows["make-cam"][2] == f"{100 * 0.5 / 3600:.2f} h"
    assert rows["segment (val)"][2] == f"{1449 * 0.2 / 3600:.2f} h"  # the val images, not N
    total = re.search(r"Total: ([0-9.]+) h", out)
    assert total is not None
    # train-cam alone is at least 15 epochs x 100 images x 1.6 s / 16
    assert float(total.group(1)) >= 15 * 100 * 1.6 / 16 / 3600


def test_estimate_voc_network_timings_run_on_cpu():
    """The GPU measurement code, exercised on the CPU with the tiny backbone."""
    est = load("estimate_voc")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy 2-core machine make small ops crawl
    try:
        out = est.measure_gpu(torch.device("cpu"), backbone="tiny", crop=96, size=(120, 90),
                              scales=(1.0, 0.5), repeats=1, cam_batch=2, aff_batch=2, seg_batch=2)
    finally:
        torch.set_num_threads(threads)
    assert set(est.GPU_KEYS) <= set(out)
    assert all(v > 0 for v in out.values())


def test_bench_training_step_rows_run_on_cpu():
    """The GPU rows' code (fp32 / bf16 autocast / channels-last steps), on the CPU, tiny backbone."""
    bench = load("bench_training")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = bench.step_rows(2, 1, False, torch.device("cpu"), backbone="tiny", batch=2, crop=64)
    finally:
        torch.set_num_threads(threads)
    assert [r["variant"] for r in rows] == ["fp32", "bf16 autocast", "bf16 autocast + channels-last"]
    assert rows[0]["speedup"] == 1.0 and all(r["step_s"] > 0 for r in rows)


def test_estimate_voc_gpu_only_needs_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("with CUDA --gpu-only measures for real (benchmarks/gpu_check.sh)")
    assert load("estimate_voc").main(["--gpu-only", str(tmp_path / "gpu.json")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "gpu.json").exists()


def test_bench_families_quick(capsys):
    assert load("bench_families").main(["--quick", "--families", "small", "--recipes", "demo"]) == 0
    rows = table_rows(capsys.readouterr().out, "| family |")
    assert [(r[0], r[1]) for r in rows] == [("small", "demo")]
    assert all(0 <= float(r[i]) <= 100 for r in rows for i in (2, 3, 5))


def test_bench_coco_scale_quick(capsys):
    assert load("bench_coco_scale").main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "Machine:" in out
    prep = table_rows(out, "| step | total |")
    assert [r[0].split(" (")[0] for r in prep] == ["first run", "rerun, everything done",
                                                      "one image's masks at COCO size"]
    disk = {r[0]: r for r in table_rows(out, "| output |")}
    assert float(disk["cam/*.npz (make-cam)"][1].split()[0]) > 0  # KiB per image
    assert float(disk["SegmentationObject/ instances (prepare-coco)"][1].split()[0]) > 0
    assert float(disk["crf/*.npz (make-aff-labels: CRF scores of both alphas, float16)"][1].split()[0]) > 0
    assert "**all per-image outputs**" in disk
    crf = table_rows(out, "| classes in the image |")
    assert [r[0] for r in crf] == ["1", "2", "3", "4", "5", "6", "**train_aug**"] and crf[-1][2] == "**10,582**"
    rerun = table_rows(out, "| step | 60 images |")
    assert len(rerun) == 3 and all(r[-1].endswith(" s") for r in rerun)
    mem = table_rows(out, "| call |")
    assert len(mem) == 4 and all(r[3].endswith("MiB") and r[3] != "nan MiB" for r in mem)


def test_bench_fidelity_quick(capsys):
    assert load("bench_fidelity").main(["--quick"]) == 0
    rows = table_rows(capsys.readouterr().out, "| what differs |")
    assert len(rows) == 6
    # float16 scores change (almost) no cell; both pixel rows report grey levels
    assert all(r[-1].endswith("%)") for r in rows[:4]) and "grey levels" in rows[-1][-1]


def test_bench_import_cams_quick(capsys):
    assert load("bench_import_cams").main(["--quick", "--formats", "irn", "--blurs", "0.06"]) == 0
    out = capsys.readouterr().out
    trips = table_rows(out, "| format |")
    assert [r[0] for r in trips] == ["irn"]
    assert all(r[1].split(" of ")[0] == r[1].split(" of ")[1] != "0" and r[3] == "none" for r in trips), trips
    rows = table_rows(out, "| CAMs |")
    assert [r[0] for r in rows] == ["ours (demo classifier)", "blurred ground truth, blur 0.06"]
    assert all(0 <= float(r[i]) <= 100 for r in rows for i in (1, 2, 4))


def test_bench_random_walk_quick(capsys):
    """Both walks, dense and sparse at the same thread count, agree on a small grid."""
    assert load("bench_random_walk").main(["--quick", "--grids", "12", "--repeats", "1", "--threads", "1"]) == 0
    rows = table_rows(capsys.readouterr().out, "| walk |")
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [("psa", "12 x 12 (144)", "21", "1"),
                                                          ("irn", "12 x 12 (144)", "20", "1")]
    assert all(r[-1] == "100.000 %" and r[-2].endswith("x") for r in rows), rows
