"""Scale-out under torchrun on the CPU (gloo, 2 processes).

* one DDP training step of the real ``training.fit`` on two half-batches equals one
  single-process step on the whole batch;
* ``fit`` trains a network with trained BN on CPU under DDP (no SyncBatchNorm there), and the
  ranks stay in sync;
* make-cam, make-aff-labels and random-walk split the image list over two ranks (and the CRF
  over processes) and write exactly what a single process writes.

The distributed parts run this file as a script under ``python -m torch.distributed.run
--standalone`` (a free rendezvous port is picked by torchrun itself).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from affinitynet.artifacts import TrainingFolder

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]

# a handful of steps on a tiny synthetic set: enough to give the inference stages non-trivial
# networks, small enough for the default suite
TINY_SETS = [
    "train_cam.epochs=2", "train_cam.batch_size=4", "train_cam.resize_long=[120,160]",
    "train_cam.crop=128", "make_cam.scales=[1.0,0.5]", "make_cam.num_workers=0",
    "train_aff.epochs=1", "train_aff.batch_size=4", "train_aff.resize_long=[120,160]",
    "train_aff.crop=128", "aff_labels.processes=1", "aff_labels.crf_iterations=5",
    "train_seg.epochs=1", "train_seg.batch_size=4", "train_seg.resize_long=[120,160]", "train_seg.crop=128",
]


# ------------------------------------------------------------------------------------------
# launching
# ------------------------------------------------------------------------------------------
def torchrun(nproc: int, *args: str, timeout: float = 240, target: tuple[str, ...] = (str(HERE),)
             ) -> subprocess.CompletedProcess:
    """Run ``target`` (this file as a script, or ``-m affinitynet``) on ``nproc`` local ranks;
    fail with its output on error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *target, *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


# ------------------------------------------------------------------------------------------
# workers (run under torchrun, and in-process for the single-process reference)
# ------------------------------------------------------------------------------------------
class _Seeded(torch.utils.data.Dataset):
    """A dataset without augmentation that takes fit's (index, augmentation seed) items."""

    def __init__(self, base) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item):
        return self.base[item[0]]


def _fit_worker(out: Path, frozen_bn: bool) -> dict:
    """Two epochs of one step each (8 images, global batch 8) of a tiny classifier via
    ``training.fit``; with ``frozen_bn`` BN runs in eval mode, so the step depends only on the
    gradient sum over the global batch and is the same however the batch is split."""
    from torch.utils.data import TensorDataset

    from affinitynet import distributed, training
    from affinitynet.config import RunConfig, TrainingConfig
    from affinitynet.models import build_classifier

    d, device = distributed.setup("cpu")
    torch.manual_seed(0)
    net = build_classifier("tiny", 3)
    if frozen_bn:
        net.freeze_batchnorm = True  # as ResNet-38: BN in eval mode, affine frozen
        net.train()
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), out / "init.pt")
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 48, 48, generator=gen)
    labels = (torch.rand(8, 3, generator=gen) > 0.5).float()
    train_set = _Seeded(TensorDataset(images, labels))
    val_set = TensorDataset(images[:5] * 0.5, labels[:5])  # 5: ranks get 3 and 2 images

    def loss_fn(model, batch):
        return torch.nn.functional.multilabel_soft_margin_loss(model(batch[0]), batch[1]), {}

    settings = TrainingConfig(batch_size=8, epochs=2, lr=0.05, weight_decay=5e-4, momentum=0.9, num_workers=0,
                              amp=False, seed=3)
    result = training.fit(net, loss_fn, train_set, val_set, settings, TrainingFolder(out), device, resume=False,
                          config=RunConfig(), desc="test")
    # every rank's own copy, to check that DDP kept the replicas identical
    torch.save(net.state_dict(), out / f"rank{d.rank}.pt")
    return result


def _worker(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "fit":
        out = Path(argv[1])
        for sub, frozen in (("frozen", True), ("trained", False)):
            _fit_worker(out / sub, frozen)
    elif mode == "infer":
        # what ``affinitynet make-cam/make-aff-labels/random-walk/segment --config X`` runs (or
        # the stages named after the folder), keeping the results; 2 CRF processes per rank (the
        # reference uses 1)
        from affinitynet import config as C
        from affinitynet import distributed
        from affinitynet.stages import make_aff_labels, make_cam, random_walk, segment

        cfg = C.load_config(C.RunConfig, argv[1], ["aff_labels.processes=2", "ir_labels.processes=2"])
        d, _ = distributed.setup(cfg.device)
        stages = {"make_cam": make_cam, "aff_labels": make_aff_labels, "random_walk": random_walk, "segment": segment}
        results = {name: stage.run(cfg) for name, stage in stages.items() if name in argv[3:] or len(argv) == 3}
        Path(argv[2], f"results{d.rank}.json").write_text(json.dumps(results, default=str))
    else:
        raise SystemExit(f"unknown mode {mode}")


# ------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------
def test_shard_covers_every_item_once():
    from affinitynet.distributed import Dist, shard

    items = [f"img{i}" for i in range(11)]
    for world in (1, 2, 3, 4, 16):
        parts = [shard(items, Dist(r, world)) for r in range(world)]
        flat = [x for p in parts for x in p]
        assert sorted(flat) == sorted(items) and len(flat) == len(items)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_wrap_model_is_identity_without_process_group():
    from affinitynet import distributed
    from affinitynet.models import build_classifier

    net = build_classifier("tiny", 3)
    assert distributed.wrap_model(net, torch.device("cpu")) is net
    assert distributed.trains_batchnorm(net)
    net.freeze_batchnorm = True  # as ResNet-38 / ResNet-50: nothing to synchronise
    assert not distributed.trains_batchnorm(net)
    assert not distributed.trains_batchnorm(torch.nn.Conv2d(3, 3, 1))


def test_ddp_step_equals_single_process_step(tmp_path):
    torchrun(2, "fit", str(tmp_path / "ddp"))
    _fit_worker(tmp_path / "single" / "frozen", frozen_bn=True)

    # replicas agree bit for bit (DDP averages gradients and broadcasts rank 0's BN buffers)
    for sub in ("frozen", "trained"):
        r0 = torch.load(tmp_path / "ddp" / sub / "rank0.pt")
        r1 = torch.load(tmp_path / "ddp" / sub / "rank1.pt")
        for k in r0:
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
                assert torch.equal(r0[k], r1[k]), k

    # frozen BN: 2 ranks x 4 images == 1 process x 8 images, after two steps with momentum
    ddp = torch.load(TrainingFolder(tmp_path / "ddp" / "frozen").final)
    single = torch.load(TrainingFolder(tmp_path / "single" / "frozen").final)
    for k, v in single.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6, msg=k)
    # training really moved the weights, so the comparison means something
    init = torch.load(tmp_path / "single" / "frozen" / "init.pt")
    assert not torch.allclose(single["fc8.weight"], init["fc8.weight"], atol=1e-4)
    assert torch.equal(torch.load(tmp_path / "ddp" / "frozen" / "init.pt")["fc8.weight"], init["fc8.weight"])
    from affinitynet.artifacts import read_jsonl

    def log(path):
        return read_jsonl(path / "log.jsonl")

    steps = [r for r in log(tmp_path / "ddp" / "frozen") if r["kind"] == "step"]
    steps1 = [r for r in log(tmp_path / "single" / "frozen") if r["kind"] == "step"]
    # the poly schedule counts global steps: same step numbers and learning rates
    assert [(r["step"], r["lr"]) for r in steps] == [(r["step"], r["lr"]) for r in steps1] == [
        (1, 0.05), (2, pytest.approx(0.05 * 0.5 ** 0.9))]
    # logged loss is the global-batch loss
    for a, b in zip(steps, steps1):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    # validation loss over 5 images split 3 + 2 equals the single-process one (no padding)
    ep, ep1 = ([r for r in log(tmp_path / p / "frozen") if r["kind"] == "epoch"] for p in ("ddp", "single"))
    assert len(ep) == len(ep1) == 2
    for a, b in zip(ep, ep1):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    # trained BN on CPU under DDP: plain BN per rank (SyncBatchNorm cannot train on CPU)
    assert TrainingFolder(tmp_path / "ddp" / "trained").final.exists()
    assert [r["kind"] for r in log(tmp_path / "ddp" / "trained")] == ["step", "epoch"] * 2


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """Tiny synthetic set, tiny networks trained for a few steps, and the single-process
    reference outputs of the four per-image stages (in ``ref``)."""
    from affinitynet import config as C
    from affinitynet import pipeline
    from affinitynet.data.synthetic import generate
    from affinitynet.stages import (make_aff_labels, make_cam, random_walk, segment, train_aff, train_cam,
                                    train_seg)

    base = tmp_path_factory.mktemp("dist")
    generate(base / "data", 6, 5, seed=0)
    cfg = pipeline.demo_config(base / "ref", TINY_SETS + [f"dataset.root={base / 'data'}"], device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank (OMP_NUM_THREADS=1)
    try:
        train_cam.run(cfg)
        ref = {"make_cam": make_cam.run(cfg), "aff_labels": make_aff_labels.run(cfg)}
        train_aff.run(cfg)
        ref["random_walk"] = random_walk.run(cfg)
        train_seg.run(cfg)
        ref["segment"] = segment.run(cfg)
    finally:
        torch.set_num_threads(threads)
    (base / "config.yaml").write_text(C.dump_yaml(cfg))
    return base, cfg, ref


def _cam_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_sharded_inference_matches_single_process(trained_workdir):
    base, cfg, ref = trained_workdir
    dist = base / "ddp"
    for sub in ("classifier", "affinity", "segmentation"):
        (dist / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(TrainingFolder(base / "ref" / sub).final, TrainingFolder(dist / sub).final)
    config = base / "config_ddp.yaml"
    config.write_text((base / "config.yaml").read_text().replace(str(base / "ref"), str(dist)))
    torchrun(2, "infer", str(config), str(base))

    from affinitynet.data.voc import VOCDataset, inference_names

    voc = VOCDataset(cfg.dataset.root)
    names = inference_names(cfg.dataset, voc)
    assert len(names) == 11
    for folder, ext in (("cam", "npz"), ("cam_pred", "png"), ("crf", "npz"), ("aff_labels", "png"), ("pseudo_labels", "png"),
                        ("seg_pred", "png")):
        if folder == "seg_pred":  # segment takes the val split
            names = voc.split(cfg.dataset.val_split)
            assert len(names) == 5
        got = sorted(p.name for p in (dist / folder).iterdir())
        assert got == sorted(f"{n}.{ext}" for n in names), folder  # none skipped, no strays
        for n in names:
            a, b = base / "ref" / folder / f"{n}.{ext}", dist / folder / f"{n}.{ext}"
            if ext == "png":
                assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest(), b
            else:  # the zip container of .npz stores its write time; compare every array bit for bit
                ra, rb = _cam_arrays(a), _cam_arrays(b)
                assert ra.keys() == rb.keys()
                for k in ra:
                    assert ra[k].dtype == rb[k].dtype and np.array_equal(ra[k], rb[k]), (b, k)

    # rank 0 evaluated after the barrier (on every image, else evaluate_folder would have
    # raised): same scores as the single-process run; the other rank does not evaluate
    got = json.loads((base / "results0.json").read_text())
    other = json.loads((base / "results1.json").read_text())
    for stage, keys in (("make_cam", ("miou", "best_threshold", "best_miou", "sweep")),
                        ("aff_labels", ("confident_precision", "confident_coverage")),
                        ("random_walk", ("miou", "per_class", "confusion")),
                        ("segment", ("miou", "per_class", "confusion"))):
        for k in keys:
            assert k in ref[stage] and got[stage][k] == json.loads(json.dumps(ref[stage][k], default=str)), (stage, k)
            assert k not in other[stage]
    assert sum(json.loads((base / f"results{r}.json").read_text())["make_cam"]["images"] for r in (0, 1)) == 11


#: method irn at its smallest, with IRN's CAM fusion (the stride-4 maps in the CAM files)
IRN_SETS = ["method=irn", "make_cam.fusion=irn", "ir_labels.processes=1", "ir_labels.crf_iterations=2",
            "train_irn.epochs=1", "train_irn.batch_size=2", "train_irn.crop=96", "train_irn.num_workers=0",
            "irn_labels.exp_times=3", "irn_labels.crop=160", "irn_labels.num_workers=0"]


def test_irn_sharded_inference_matches_single_process(trained_workdir, tmp_path):
    """``method: irn`` under torchrun: make-cam (IRN's fusion), IRN's confident labels and its
    walk (labels, boundary maps, instance files) write on 2 ranks what one process writes, and
    rank 0 alone scores the pseudo labels and the instances, as the single process does."""
    from affinitynet import config as C
    from affinitynet.stages import make_aff_labels, make_cam, random_walk, train_aff

    base, _, _ = trained_workdir
    ref, dist = tmp_path / "ref", tmp_path / "ddp"
    for folder in (ref, dist):
        (folder / "classifier").mkdir(parents=True)
        shutil.copy(TrainingFolder(base / "ref" / "classifier").final, TrainingFolder(folder / "classifier").final)
    cfg = C.load_config(C.RunConfig, base / "config.yaml", [*IRN_SETS, f"workdir={ref}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref_results = {"make_cam": make_cam.run(cfg), "aff_labels": make_aff_labels.run(cfg)}
        train_aff.run(cfg)
        ref_results["random_walk"] = random_walk.run(cfg)
    finally:
        torch.set_num_threads(threads)
    (dist / "affinity").mkdir()
    shutil.copy(TrainingFolder(ref / "affinity").final, TrainingFolder(dist / "affinity").final)
    config = tmp_path / "irn_ddp.yaml"
    config.write_text(C.dump_yaml(dataclasses.replace(cfg, workdir=str(dist))))
    torchrun(2, "infer", str(config), str(tmp_path), "make_cam", "aff_labels", "random_walk")

    for folder in ("cam", "aff_labels", "pseudo_labels", "boundary", "instances"):
        names = sorted(p.name for p in (ref / folder).iterdir())
        assert len(names) == 11 and sorted(p.name for p in (dist / folder).iterdir()) == names, folder
        for name in names:
            a, b = ref / folder / name, dist / folder / name
            if folder == "cam":
                ra, rb = _cam_arrays(a), _cam_arrays(b)
                assert set(ra) == set(rb) and "strided" in ra
                assert all(np.array_equal(ra[k], rb[k]) for k in ra), b
            else:
                assert a.read_bytes() == b.read_bytes(), b
    got, other = (json.loads((tmp_path / f"results{r}.json").read_text()) for r in (0, 1))
    want = json.loads(json.dumps(ref_results["random_walk"], default=str))
    assert want["instances"]["num_images"] == 5 and got["random_walk"]["instances"] == want["instances"]
    assert got["random_walk"]["miou"] == want["miou"]
    assert "instances" not in other["random_walk"] and "miou" not in other["random_walk"]


# the reduced demo of docs/DISTRIBUTED.md: its data, and the largest mIoU difference (points)
# between a 1- and a 2-process run that data order, augmentation and per-rank BN allow
DEMO_DATA = (80, 20)
DEMO_MIOU_TOLERANCE = 10.0


@pytest.mark.slow
def test_demo_on_two_processes_matches_single_process(tmp_path):
    """``affinitynet demo`` under torchrun (2 ranks, only rank 0 writes the dataset) against one
    process: the same schedule step by step, and scores within the tolerance of data order."""
    from affinitynet.artifacts import read_jsonl
    from affinitynet.data.synthetic import generate

    runs = {}
    for name, nproc in (("single", 1), ("ddp", 2)):
        work = tmp_path / name
        generate(work / "data", *DEMO_DATA, seed=0)
        torchrun(nproc, "demo", "--workdir", str(work), "--device", "cpu", timeout=1800,
                 target=("-m", "affinitynet"))
        runs[name] = json.loads((work / "metrics.json").read_text())
        for stage in ("classifier", "affinity"):
            log = read_jsonl(work / stage / "log.jsonl")
            runs[name][stage] = [(r["step"], r["lr"]) for r in log if r["kind"] == "step"]
    single, ddp = runs["single"], runs["ddp"]
    assert ddp["classifier"] == single["classifier"] and ddp["affinity"] == single["affinity"]
    for key in ("make_cam", "random_walk"):
        assert abs(ddp[key]["miou"] - single[key]["miou"]) <= DEMO_MIOU_TOLERANCE, (key, single, ddp)
    assert (tmp_path / "ddp" / "vis").is_dir()


if __name__ == "__main__":
    _worker(sys.argv[1:])


def test_error_on_one_rank_ends_every_rank_with_one_line(tmp_path):
    """A bad image under torchrun: the rank that reads it prints the usual one-line error, the
    other rank stops with one line too (no transport traceback) and torchrun exits non-zero."""
    from affinitynet.data.synthetic import generate

    generate(tmp_path / "data", 6, 2, seed=1)
    bad = tmp_path / "data" / "JPEGImages" / "train_00001.jpg"
    bad.write_bytes(b"not a jpeg")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "affinitynet", "train-cam", "--workdir", str(tmp_path / "work"), "--dataset",
           str(tmp_path / "data"), "--device", "cpu", "--set", "dataset.train_split=train",
           *[f"--set=train_cam.{kv}" for kv in ("backbone=tiny", "crop=64", "batch_size=2", "epochs=1",
                                                  "num_workers=0")]]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"affinitynet: error: {bad}: not an image file" in out
    assert "[rank0]: Traceback" not in out and "[rank1]: Traceback" not in out, out[-3000:]
