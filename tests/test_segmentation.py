"""Stage 5's algorithm and transform: multi-scale + flip probabilities, labels, joint crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from affinitynet.algorithms.segmentation import multiscale_probabilities, probabilities_to_label
from affinitynet.data.transforms import ResizePadJointTransform, SegmentationTransform, normalize
from affinitynet.stages.train_seg import segmentation_loss


def _image(h: int = 40, w: int = 56) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _left_right_scores(x: torch.Tensor) -> torch.Tensor:
    """A fake network at stride 8: class 1 scores high on the left half, class 2 on the right,
    background in between stays low; depends on the input only through its size."""
    b, _, h, w = x.shape
    hh, ww = -(-h // 8), -(-w // 8)
    ramp = torch.linspace(-4, 4, ww).view(1, 1, 1, ww).expand(b, 1, hh, ww)
    return torch.cat([torch.zeros_like(ramp), -ramp, ramp], dim=1)


def test_probabilities_sum_to_one_and_label_follows_scores():
    image = _image()
    probs = multiscale_probabilities(_left_right_scores, image, lambda im: normalize(im, "imagenet"),
                                     scales=(1.0, 0.5), flip=False)
    assert probs.shape == (3, 40, 56)
    assert torch.allclose(probs.sum(0), torch.ones(40, 56), atol=1e-5)
    label = probabilities_to_label(probs)
    assert label.dtype == np.uint8 and label.shape == (40, 56)
    assert (label[:, :20] == 1).all() and (label[:, -20:] == 2).all()


def test_flip_pass_is_flipped_back():
    """With flip, the flipped image's scores are flipped back before averaging: a network that
    ignores the image gives the mean of its map and its mirror image."""
    image = _image()
    norm = lambda im: normalize(im, "imagenet")  # noqa: E731
    plain = multiscale_probabilities(_left_right_scores, image, norm, scales=(1.0,), flip=False)
    both = multiscale_probabilities(_left_right_scores, image, norm, scales=(1.0,), flip=True)
    assert torch.allclose(both, (plain + plain.flip(-1)) / 2, atol=1e-6)
    with pytest.raises(ValueError):
        multiscale_probabilities(_left_right_scores, image, norm, scales=(), flip=True)


def test_segmentation_loss_ignores_255_and_upsamples():
    scores = torch.zeros(1, 3, 2, 2)
    scores[0, 1] = 10.0  # class 1 everywhere, at stride 8 of a 16x16 label
    label = torch.full((1, 16, 16), 1, dtype=torch.uint8)
    assert segmentation_loss(scores, label) < 1e-3
    label[0, :8] = 2
    wrong = float(segmentation_loss(scores, label))
    label[0, :8] = 255  # the wrong half ignored: back to the right half's loss
    assert float(segmentation_loss(scores, label)) < 1e-3 < wrong
    expected = F.cross_entropy(F.interpolate(scores, size=(16, 16), mode="bilinear", align_corners=False),
                               torch.ones(1, 16, 16, dtype=torch.long))
    assert float(segmentation_loss(scores, torch.ones(1, 16, 16, dtype=torch.uint8))) == pytest.approx(float(expected))


def test_segmentation_transform_keeps_image_and_label_aligned():
    image = np.zeros((60, 80, 3), np.uint8)
    image[:, 40:] = 255  # right half white
    label = np.zeros((60, 80), np.uint8)
    label[:, 40:] = 3
    tf = SegmentationTransform(crop=64, resize_long=(70, 90), color_jitter=(0, 0, 0, 0))
    for seed in range(5):
        x, lab = tf(image, label, generator=torch.Generator().manual_seed(seed))
        assert x.shape == (3, 64, 64) and lab.shape == (64, 64) and lab.dtype == torch.uint8
        inside = lab != 255
        white = x[0] > 1.0  # normalised white is > 2, black < -2, padding 0
        assert torch.equal(white[inside], (lab == 3)[inside])
    again = tf(image, label, generator=torch.Generator().manual_seed(4))
    assert torch.equal(again[0], x) and torch.equal(again[1], lab)


def test_segment_stage_with_and_without_crf(tmp_path, capsys):
    """``affinitynet segment`` on the val split with an (untrained) network: one valid label PNG
    per val image and scores; ``segment.crf`` refines the same probabilities (labels change,
    and the CRF output is smoother: fewer label changes between neighbouring pixels);
    ``train-seg`` before the random walk names the missing folder."""
    from affinitynet import artifacts
    from affinitynet.cli import main
    from affinitynet.data.images import load_label_png
    from affinitynet.data.synthetic import generate
    from affinitynet.data.voc import VOCDataset
    from affinitynet.models import build_segmentation_net

    generate(tmp_path / "data", 2, 3, seed=2)
    voc = VOCDataset(tmp_path / "data")
    results = {}
    for crf in (False, True):
        work = tmp_path / f"work_crf{crf}"
        torch.manual_seed(0)
        artifacts.save_checkpoint(artifacts.WorkDir(work).segmentation.final,
                                  build_segmentation_net("tiny", voc.num_classes).state_dict())
        argv = ["segment", "--workdir", str(work), "--dataset", str(tmp_path / "data"), "--device", "cpu",
                "--set", "train_cam.backbone=tiny", "--set", "segment.num_workers=0",
                "--set", f"segment.crf={str(crf).lower()}"]
        assert main(argv) == 0
        labels = {n: load_label_png(work / "seg_pred" / f"{n}.png") for n in voc.split("val")}
        for n, label in labels.items():
            assert label.shape == voc.load_image(n).shape[:2]
            assert label.max() <= voc.num_classes
        results[crf] = labels

    def edges(label: np.ndarray) -> int:
        return int((label[1:] != label[:-1]).sum() + (label[:, 1:] != label[:, :-1]).sum())

    assert any(not np.array_equal(results[False][n], results[True][n]) for n in results[False])
    assert sum(map(edges, results[True].values())) < sum(map(edges, results[False].values()))

    argv = ["train-seg", "--workdir", str(tmp_path / "fresh"), "--dataset", str(tmp_path / "data"),
            "--device", "cpu", "--set", "train_cam.backbone=tiny"]
    assert main(argv) == 2
    assert "pseudo_labels: label folder does not exist (run random-walk first" in capsys.readouterr().err


def test_resize_pad_joint_transform():
    """Long side to the crop, image padded with 0 (the mean), label with 255, aligned."""
    image = np.zeros((30, 60, 3), np.uint8)
    image[:, 30:] = 255
    label = np.zeros((30, 60), np.uint8)
    label[:, 30:] = 2
    x, lab = ResizePadJointTransform(120)(image, label)
    assert x.shape == (3, 120, 120) and lab.shape == (120, 120)
    assert (lab[60:] == 255).all() and (x[:, 60:] == 0).all()  # 30x60 -> 60x120, padded below
    assert (lab[:60, :55] == 0).all() and (lab[:60, 65:] == 2).all()
    assert (x[0, :60, :55] < -1).all() and (x[0, :60, 65:] > 1).all()
    with pytest.raises(ValueError):
        ResizePadJointTransform(120)(image, label[:10])
