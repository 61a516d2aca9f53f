"""Using the result: every segmentation network trains, `predict` gives segment's labels on
new images, the exported ONNX / TorchScript files compute what PyTorch computes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from _helpers import single_torch_thread
from PIL import Image

from affinitynet import artifacts
from affinitynet.artifacts import WorkDir
from affinitynet.cli import main
from affinitynet.data.synthetic import generate
from affinitynet.errors import InputError
from affinitynet.models import SEGMENTATION_MODELS, build_segmentation_model, main_scores

TRAIN_SEG = ["--device", "cpu", "--set", "train_cam.backbone=tiny", "--set", "dataset.train_split=train",
             "--set", "dataset.val_split=val", "--set", "train_seg.batch_size=2", "--set", "train_seg.crop=64",
             "--set", "train_seg.resize_long=[64,96]", "--set", "train_seg.num_workers=0",
             "--set", "train_seg.epochs=1", "--set", "segment.num_workers=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("use") / "data"
    generate(root, 4, 3, seed=6)
    return root


def imagenet_like_resnet(depth: int) -> torch.nn.Module:
    """A torchvision ResNet with random weights whose batch-norm statistics fit its activations
    (as trained weights' do), so that frozen batch norm keeps them in range."""
    torch.manual_seed(depth)
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the batches below
    with torch.no_grad():
        net.train()
        for _ in range(2):
            net(torch.randn(4, 3, 64, 64))
    return net


def _train_seg(data, work, *sets: str) -> int:
    with single_torch_thread():
        return main(["train-seg", "--workdir", str(work), "--dataset", str(data), *TRAIN_SEG,
                     "--set", f"train_seg.labels={data / 'SegmentationClass'}", *sets])


@pytest.mark.parametrize("model", sorted(SEGMENTATION_MODELS))
def test_every_segmentation_network_trains(model, data, tmp_path):
    """Shapes, the loss, and a few SGD steps on the synthetic data (ground truth as labels); the
    ResNet ones start from an ImageNet file given by path (here: torchvision's layout, random)."""
    # a small step (random weights, not ImageNet's, diverge with the recipes' rates), small crops
    sets = ["--set", f"train_seg.model={model}", "--set", "train_seg.lr=1e-4", "--set", "train_seg.batch_size=2",
            "--set", "train_seg.crop=48", "--set", "dataset.val_split=none"]
    start = None
    if model != "largefov":
        depth = 101 if model.endswith("101") or model == "deeplabv2" else 50
        weights = tmp_path / f"resnet{depth}.pth"
        start = imagenet_like_resnet(depth).state_dict()
        torch.save(start, weights)
        sets += ["--set", f"train_seg.weights={weights}"]
    if model.startswith("deeplabv3"):
        sets += ["--set", "train_seg.aux_loss=true"]
    work = tmp_path / "work"
    assert _train_seg(data, work, *sets) == 0
    folder = WorkDir(work).segmentation
    steps = [r for r in artifacts.read_jsonl(folder.log) if r["kind"] == "step"]
    assert len(steps) == 2 and all(np.isfinite(r["loss"]) for r in steps)
    if model.startswith("deeplabv3"):
        assert all("aux" in r and "main" in r for r in steps)  # the auxiliary head's loss is in
    final = artifacts.load_checkpoint(folder.final)
    assert final["meta"]["model"] == model and final["meta"]["classes"] == ["stripes", "dots", "checker", "rings",
                                                                             "waves"]
    net = build_segmentation_model(model, "tiny", 5, final["meta"]["aux_loss"])
    net.load_state_dict(final["model"])
    if start is not None:  # the backbone started from the file and trained on
        trained = {k.removeprefix("backbone."): v for k, v in final["model"].items() if k.startswith("backbone.")}
        assert any(not torch.equal(trained[k], v) for k, v in start.items()
                   if k in trained and k.endswith("conv2.weight"))
    with torch.no_grad():
        scores = main_scores(net.eval()(torch.randn(1, 3, 75, 61)))
    assert scores.shape == (1, 6, 10, 8) and torch.isfinite(scores).all()


def test_missing_imagenet_file_is_one_error(data, tmp_path, capsys):
    status = _train_seg(data, tmp_path / "work", "--set", "train_seg.model=deeplabv2",
                        "--set", f"train_seg.weights={tmp_path / 'resnet101.pth'}")
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err[-1] == f"affinitynet: error: {tmp_path / 'resnet101.pth'}: weight file not found"


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A tiny LargeFOV network trained for one epoch, and segment's labels of the val split."""
    work = tmp_path_factory.mktemp("use_work") / "work"
    assert _train_seg(data, work) == 0
    with single_torch_thread():
        assert main(["segment", "--workdir", str(work), "--dataset", str(data), *TRAIN_SEG]) == 0
    return work


def test_predict_writes_segments_labels_for_new_images(data, trained, tmp_path, capsys):
    names = [f"val_{i:05d}" for i in range(3)]
    images = [data / "JPEGImages" / f"{n}.jpg" for n in names]
    new = tmp_path / "new"  # the same pictures, copied where no split lists them
    new.mkdir()
    for image in images:
        (new / image.name).write_bytes(image.read_bytes())
    (new / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "list.txt").write_text(f"{images[0]}\n")
    out = tmp_path / "out"
    with single_torch_thread():
        status = main(["predict", str(new), "--weights", str(trained), "--out", str(out), "--overlay",
                       "--device", "cpu", "--workers", "0"])
    err = capsys.readouterr().err
    assert status == 2 and f"{new / 'broken.jpg'}: not an image file" in err  # named; the others still done
    for n in names:
        assert (out / f"{n}.png").read_bytes() == WorkDir(trained).png(WorkDir(trained).seg_pred, n).read_bytes()
        assert Image.open(out / "overlay" / f"{n}.jpg").size == Image.open(data / "JPEGImages" / f"{n}.jpg").size
    assert (out / "classes.txt").read_text().split() == ["stripes", "dots", "checker", "rings", "waves"]
    # batches of same-size images, a list file, a final.pth instead of the work folder
    batched = tmp_path / "batched"
    with single_torch_thread():
        assert main(["predict", str(tmp_path / "list.txt"), *map(str, images[1:]), "--batch-size", "4",
                     "--weights", str(WorkDir(trained).segmentation.final), "--out", str(batched), "--device",
                     "cpu", "--workers", "0"]) == 0
    for n in names:
        a = np.asarray(Image.open(batched / f"{n}.png"))
        b = np.asarray(Image.open(out / f"{n}.png"))
        assert (a == b).mean() >= 0.999


def test_predict_bad_inputs(trained, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope"), "--weights", str(trained), "--out", str(tmp_path / "o")]) == 2
    assert "no such image, folder or list" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--weights", str(tmp_path / "x.pth"), "--out", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_computes_what_pytorch_computes(trained, tmp_path, fmt):
    from affinitynet.inference import load_segmenter

    out = tmp_path / f"seg.{fmt}"
    with single_torch_thread():
        assert main(["export", "--weights", str(trained), "--out", str(out), "--format", fmt]) == 0
    info = json.loads(out.with_suffix(out.suffix + ".json").read_text())
    assert info["classes"] == ["stripes", "dots", "checker", "rings", "waves"]
    from affinitynet.config import SegmentConfig

    # the package's own inference (segment / predict at one scale, no flip) on the same images
    segmenter = load_segmenter(trained, settings=SegmentConfig(scales=(1.0,), flip=False, channels_last=False))
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        run = lambda x: session.run(["probabilities"], {"image": x.numpy()})[0]  # noqa: E731
    else:
        loaded = torch.jit.load(str(out))
        run = lambda x: loaded(x).detach().numpy()  # noqa: E731
    rng = np.random.default_rng(0)
    for size in ((1, 3, 83, 117), (2, 3, 120, 64)):  # two sizes, and a batch: the axes are dynamic
        images = rng.integers(0, 256, (size[0], size[2], size[3], 3), dtype=np.uint8)
        want = segmenter.probabilities(list(images)).numpy()
        got = run(torch.from_numpy(images).permute(0, 3, 1, 2).float())
        assert got.shape == want.shape == (size[0], 6, size[2], size[3])
        assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4


@pytest.mark.parametrize("normalization", ["imagenet", "caffe_bgr"])
def test_exported_normalisation_is_the_networks(normalization):
    """The export wrapper hands the network what ``normalize`` gives it, for both kinds of input
    (RGB mean/std and Caffe's BGR means)."""
    from affinitynet.data.transforms import normalize
    from affinitynet.stages.export import ImageToProbabilities

    class Echo(torch.nn.Module):
        seen: torch.Tensor

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen = x
            return x[:, :2]

    image = np.random.default_rng(3).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    echo = Echo()
    ImageToProbabilities(echo, normalization)(torch.from_numpy(image).permute(2, 0, 1)[None].float())
    torch.testing.assert_close(echo.seen[0], normalize(image, normalization), rtol=1e-5, atol=1e-4)


def test_export_needs_a_network(tmp_path):
    from affinitynet.config import ExportConfig
    from affinitynet.stages import export

    with pytest.raises(InputError, match="segmentation network weights do not exist"):
        export.run(ExportConfig(weights=str(tmp_path), out=str(tmp_path / "x.onnx")))
