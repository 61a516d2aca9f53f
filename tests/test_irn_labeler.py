"""``IRNLabeler``: IRN's network (weights as IRN saves them) on an image and any CAMs -> IRN's
semantic and instance pseudo labels through the shared algorithms, with the sparse walk."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from affinitynet.algorithms.boundary import semantic_pseudo_label
from affinitynet.algorithms.cam import strided_cams
from affinitynet.config import IRNLabelsConfig
from affinitynet.data.synthetic import make_sample
from affinitynet.errors import InputError
from affinitynet.inference import IRN_STRIDE, load_irn_labeler
from affinitynet.models.irn import ResNet50CAM, ResNet50IRN
from test_models import deterministic_state_dict

# the image's long side fits the network input: no zero padding, which keeps the test small
SETTINGS = IRNLabelsConfig(crop=8)


@pytest.fixture(scope="module")
def irn_weights(tmp_path_factory):
    """res50_irn.pth as IRN writes it: the network's state dict (the golden README's
    deterministic weights) plus its training module's path-index buffers."""
    state = deterministic_state_dict(ResNet50IRN())
    state["path_indices0"] = torch.zeros(3, 5, dtype=torch.int64)
    state["disp_target"] = torch.zeros(1, 2, 4, 4)
    path = tmp_path_factory.mktemp("irn") / "res50_irn.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def scene():
    """A synthetic image at 120x92 px, its classes and their CAMs (ground truth, blurred)."""
    from scipy.ndimage import gaussian_filter

    sample = make_sample(seed=3, split="val", index=1)
    image = np.asarray(Image.fromarray(sample.image).resize((120, 92), Image.BICUBIC))
    label = np.asarray(Image.fromarray(sample.label).resize((120, 92), Image.NEAREST))
    keys = np.unique(label[label > 0]).astype(np.int64) - 1
    maps = np.stack([gaussian_filter((label == k + 1).astype(np.float32), 4) for k in keys])
    return image, keys, maps / maps.max(axis=(1, 2), keepdims=True)


def test_semantic_label_is_the_walk_on_the_networks_boundaries(irn_weights, scene):
    image, keys, maps = scene
    irn = load_irn_labeler(irn_weights, settings=SETTINGS)
    edge, displacement = irn.boundary(image)
    assert edge.shape == (23, 30) and displacement.shape == (2, 23, 30)
    assert 0 <= float(edge.min()) < float(edge.max()) <= 1
    label = irn.semantic_label(image, keys, maps)
    assert label.shape == image.shape[:2] and label.dtype == np.uint8
    assert set(np.unique(label).tolist()) <= {0, *(keys + 1).tolist()}
    # the wiring: the algorithm on the network's boundary map and the pooled CAMs
    grid = torch.from_numpy(strided_cams(maps, IRN_STRIDE))
    expected, _, _ = semantic_pseudo_label(grid, keys, edge, image.shape[:2], beta=10, exp_times=8,
                                           bg_threshold=0.25, radius=5, stride=IRN_STRIDE)
    assert np.array_equal(label, expected)
    # IRN's own stride-4 cam gives the same; the dense walk (IRN's) the same labels
    assert np.array_equal(irn.semantic_label(image, keys, grid.numpy()), label)
    dense = load_irn_labeler(irn_weights, settings=dataclasses.replace(SETTINGS, method="dense"))
    assert np.array_equal(dense.semantic_label(image, keys, maps), label)


def test_instances_and_settings(irn_weights, scene):
    image, keys, maps = scene
    found = load_irn_labeler(irn_weights, settings=SETTINGS).instances(image, keys, maps)
    assert found.masks.shape[1:] == image.shape[:2] and len(found.masks) == len(found.classes) == len(found.scores)
    assert len(found.masks) >= len(keys) and set(found.classes.tolist()) <= set(keys.tolist())
    # a higher background plane keeps fewer pixels in the semantic label
    strict = load_irn_labeler(irn_weights, settings=dataclasses.replace(SETTINGS, sem_seg_bg_thres=0.9))
    loose = load_irn_labeler(irn_weights, settings=SETTINGS)
    assert (strict.semantic_label(image, keys, maps) > 0).sum() < (loose.semantic_label(image, keys, maps) > 0).sum()


def test_other_weights_are_one_line_errors(tmp_path, scene):
    cam_weights = tmp_path / "res50_cam.pth"
    torch.save(ResNet50CAM().state_dict(), cam_weights)
    with pytest.raises(InputError, match="res50_cam.pth: checkpoint does not fit ResNet50IRN") as err:
        load_irn_labeler(cam_weights)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="IRN weights do not exist"):
        load_irn_labeler(tmp_path / "absent.pth")
    image, keys, maps = scene
    irn = load_irn_labeler(_fresh(tmp_path), settings=SETTINGS)
    with pytest.raises(ValueError, match="but the image is 92x120"):
        irn.semantic_label(image, keys, maps[:, :50])


def _fresh(tmp_path):
    path = tmp_path / "fresh.pth"
    torch.save(ResNet50IRN().state_dict(), path)
    return path


def test_tiny_irn_shapes_freezing_and_classifier_start(scene):
    from affinitynet.inference import IRNLabeler, prepare
    from affinitynet.models import load_backbone_state_dict
    from affinitynet.models.tiny import TinyClassifier, TinyIRN

    torch.manual_seed(0)
    net, classifier = TinyIRN(), TinyClassifier(5)
    unused = load_backbone_state_dict(net, classifier.state_dict())
    assert unused == ["fc8.weight"]
    assert torch.equal(net.stage5[0].weight, classifier.stage5[0].weight)
    # only the two branches train, in IRN's two groups; the backbone's statistics stay put
    groups = net.param_groups()
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g.params} == trainable and [g.lr_mult for g in groups] == [1.0, 10.0]
    assert not any(p.requires_grad for p in net.stage1.parameters())
    before = net.stage2[0].weight.clone(), net.stage2[1].running_mean.clone()
    net.train()
    edge_out, dp_out = net(torch.randn(2, 3, 101, 130))
    assert edge_out.shape == (2, 1, 26, 33) and dp_out.shape == (2, 2, 26, 33)
    (edge_out.mean() + dp_out.mean()).backward()
    assert net.stage2[0].weight.grad is None and torch.equal(net.stage2[1].running_mean, before[1])
    assert net.fc_edge1[0].weight.grad is not None and net.fc_dp3[3].weight.grad is not None
    # and it serves IRNLabeler as IRN's network does
    image, keys, maps = scene
    label = IRNLabeler(prepare(net, torch.device("cpu")), SETTINGS).semantic_label(image, keys, maps)
    assert label.shape == image.shape[:2] and set(np.unique(label).tolist()) <= {0, *(keys + 1).tolist()}
