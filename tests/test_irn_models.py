"""IRN's networks, multi-scale CAMs and losses against the original IRN code (golden ``irn_*``
files, deterministic weights), plus parameter groups, freezing and checkpoint loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from affinitynet.algorithms.boundary import edge_to_affinity
from affinitynet.algorithms.cam import CamGrid, fuse_cams, irn_multiscale_cam, multiscale_cams, strided_size
from affinitynet.algorithms.irn_loss import (affinity_losses, displacement_losses, irn_loss, pair_displacement,
                                             pair_losses)
from affinitynet.algorithms.path_index import directions
from affinitynet.algorithms.resize import resize_image
from affinitynet.data.transforms import normalize
from affinitynet.errors import InputError
from affinitynet.models import build_optimizer
from affinitynet.models.base import load_state_dict_strict
from affinitynet.models.irn import NEW_LAYER_LR_MULT, ResNet50CAM, ResNet50IRN, load_irn_state_dict
from conftest import golden_cases, rel_err
from test_models import deterministic_state_dict

# golden README, "Suggested tolerances for irn_*"
NET_TOL = 1e-4
CAM_TOL = 1e-4
LOSS_TOL = 1e-6
# IRN's training pairs (train_irn.py: PathIndex(radius=10)) and its CAM settings (make_cam.py)
TRAIN_RADIUS = 10
CAM_STRIDE, NET_STRIDE = 16, 4

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def irn_normalize(image: np.ndarray) -> np.ndarray:
    """IRN's loader (golden README): (x/255 - mean)/std in float64, stored as float32, CHW."""
    return ((image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def weight_cache() -> dict:
    return {}  # both networks draw the same resnet50.* tensors: draw them once


def deterministic(cls: type, cache: dict) -> torch.nn.Module:
    """``cls()`` with the README's deterministic weights (aliases drawn once), eval mode."""
    with torch.device("meta"):
        net = cls()
    net.load_state_dict(deterministic_state_dict(net, cache), assign=True)
    return net.eval()


@pytest.fixture(scope="module")
def irn_net(weight_cache) -> ResNet50IRN:
    return deterministic(ResNet50IRN, weight_cache)


@pytest.fixture(scope="module")
def cam_net(weight_cache) -> ResNet50CAM:
    return deterministic(ResNet50CAM, weight_cache)


# -- state dicts -----------------------------------------------------------------------------
def _entries(net: torch.nn.Module) -> list[list]:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in net.state_dict().items()]


def _aliases(net: torch.nn.Module) -> dict[str, str]:
    """alias key -> first key of the same tensor (num_batches_tracked left out, as the JSON)."""
    first: dict[int, str] = {}
    out = {}
    for key, tensor in net.state_dict(keep_vars=True).items():
        owner = first.setdefault(id(tensor), key)
        if owner != key and not key.endswith("num_batches_tracked"):
            out[key] = owner
    return out


@pytest.mark.parametrize("path", golden_cases("irn_state_dict_keys_*.json"))
def test_state_dicts_match_irn_releases(path):
    golden = json.loads(path.read_text())
    with torch.device("meta"):
        cam, irn = ResNet50CAM(), ResNet50IRN()
    assert _entries(cam) == golden["resnet50_cam"]
    assert _entries(irn) == golden["resnet50_irn_EdgeDisplacement"]
    assert _aliases(cam) == golden["aliases_resnet50_cam"]
    assert _aliases(irn) == golden["aliases_resnet50_irn"]
    for net in (cam, irn):  # an alias is the very same tensor, so a load through any name fits all
        state = net.state_dict(keep_vars=True)
        for alias, first in _aliases(net).items():
            assert state[alias] is state[first], alias

    # res50_irn.pth as train_irn saves it: the loss module's path index first, then the network
    saved = golden["resnet50_irn_AffinityDisplacementLoss_crop512"]
    loss_keys = [k for k, _, _ in saved[:21]]
    assert loss_keys == [f"path_indices{i}" for i in range(20)] + ["disp_target"]
    assert saved[21:] == golden["resnet50_irn_EdgeDisplacement"]
    fake = {k: torch.zeros(shape, dtype=getattr(torch, dtype), device="meta") for k, shape, dtype in saved}
    assert load_irn_state_dict(irn, fake) == loss_keys
    network_only = {k: v for k, v in fake.items() if k not in loss_keys}
    assert load_irn_state_dict(irn, network_only) == []
    load_state_dict_strict(cam, {k: torch.zeros(s, dtype=getattr(torch, d), device="meta")
                                 for k, s, d in golden["resnet50_cam"]})


def test_irn_loader_names_every_other_problem():
    with torch.device("meta"):
        net = ResNet50IRN()
    state = dict(net.state_dict())
    state["path_indices0"] = torch.zeros(2, 2, 5, dtype=torch.long)
    del state["fc_edge6.bias"]
    state["fc_edge7.weight"] = torch.zeros(1)
    state["fc_dp7.3.weight"] = torch.zeros(3, 256, 1, 1)
    with pytest.raises(InputError) as info:
        load_irn_state_dict(net, state)
    message = str(info.value)
    assert "fc_edge6.bias" in message and "fc_edge7.weight" in message and "fc_dp7.3.weight" in message
    assert "path_indices0" not in message and "\n" not in message


# -- the IRN network -------------------------------------------------------------------------
def train_input(x: torch.Tensor, crop: int) -> torch.Tensor:
    """IRN's top-left crop of a normalised image: a zero crop x crop canvas (golden README)."""
    canvas = torch.zeros(x.shape[0], 3, crop, crop)
    h, w = min(crop, x.shape[2]), min(crop, x.shape[3])
    canvas[:, :, :h, :w] = x[:, :, :h, :w]
    return canvas


@pytest.mark.parametrize("path", golden_cases("irn_net_resnet50_*.npz"))
def test_irn_network_matches_original(path, irn_net):
    g = np.load(path)
    x = torch.from_numpy(g["input"])
    # the stage's normalisation is IRN's up to float32 rounding
    assert rel_err(normalize(g["image"])[None], g["input"]) <= 1e-6
    height, width = g["image"].shape[:2]
    grid = ((height - 1) // 4 + 1, (width - 1) // 4 + 1)

    with torch.no_grad():
        edge_out, dp_out = irn_net(x)
        assert edge_out.shape[2:] == dp_out.shape[2:] == grid
        assert rel_err(edge_out, g["edge_out"]) <= NET_TOL
        assert rel_err(dp_out, g["dp_out"]) <= NET_TOL

        ed_edge, ed_dp = irn_net.edge_displacement(x, int(g["crop_size"]))
        assert rel_err(ed_edge, g["ed_edge"]) <= NET_TOL
        assert rel_err(ed_dp, g["ed_dp"]) <= NET_TOL
        assert ed_edge.shape == (1, *grid) and ed_dp.shape == (2, *grid)

        irn_net.train()
        try:
            train_edge, train_dp = irn_net(train_input(x, int(g["train_crop"])))
            # training mode drops only the MeanShift
            _, dp_no_shift = irn_net(x)
        finally:
            irn_net.eval()
    assert rel_err(train_edge, g["train_edge_out"]) <= NET_TOL
    assert rel_err(train_dp, g["train_dp_out"]) <= NET_TOL
    shift = irn_net.mean_shift.running_mean.view(1, 2, 1, 1)
    assert torch.allclose(dp_no_shift - shift, dp_out, rtol=0, atol=1e-6)


@pytest.mark.parametrize("path", golden_cases("irn_net_resnet50_*.npz"))
def test_irn_losses_match_original(path):
    """The per-pair losses from the stored training outputs (so independent of the network)."""
    g = np.load(path)
    edge = torch.from_numpy(g["train_edge_out"])
    dp = torch.from_numpy(g["train_dp_out"])
    np.testing.assert_array_equal(directions(TRAIN_RADIUS), g["search_dst"])
    n = edge.shape[-1]
    assert g["src_indices"].shape == ((n - TRAIN_RADIUS + 1) * (n - 2 * TRAIN_RADIUS + 2),)

    aff = edge_to_affinity(torch.sigmoid(edge), TRAIN_RADIUS)
    pos, neg = affinity_losses(aff)
    assert rel_err(pos, g["pos_aff_loss"]) <= LOSS_TOL
    assert rel_err(neg, g["neg_aff_loss"]) <= LOSS_TOL
    pair = pair_displacement(dp, g["search_dst"], TRAIN_RADIUS)
    assert pair.shape == g["dp_fg_loss"].shape
    dp_fg, dp_bg = displacement_losses(pair, g["search_dst"])
    assert rel_err(dp_fg, g["dp_fg_loss"]) <= LOSS_TOL
    assert rel_err(dp_bg, g["dp_bg_loss"]) <= LOSS_TOL

    # the one-call form a training stage uses gives the same four
    for got, key in zip(pair_losses(edge, dp, TRAIN_RADIUS), ("pos_aff_loss", "neg_aff_loss", "dp_fg_loss",
                                                               "dp_bg_loss")):
        assert rel_err(got, g[key]) <= LOSS_TOL, key


def test_irn_loss_reduction_hand_case():
    """train_irn.py's weights on a case small enough to add up by hand (B = 1, D = 1, 4 pairs)."""
    pos = torch.tensor([[[1.0, 3.0, 5.0, 7.0]]])
    neg = torch.tensor([[[2.0, 4.0, 6.0, 8.0]]])
    dp_fg = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]], [[5.0, 6.0, 7.0, 8.0]]]])
    dp_bg = 10 * dp_fg
    bg_pos = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    fg_pos = torch.tensor([[[0.0, 1.0, 1.0, 0.0]]])
    neg_label = torch.tensor([[[0.0, 0.0, 0.0, 1.0]]])
    out = irn_loss(pos, neg, dp_fg, dp_bg, bg_pos, fg_pos, neg_label)
    eps = 1e-5
    expected = {"pos_aff": (1 / (1 + eps)) / 2 + ((3 + 5) / (2 + eps)) / 2,
                "neg_aff": 8 / (1 + eps),
                "dp_fg": (2 + 3 + 6 + 7) / (4 + eps),
                "dp_bg": (10 + 50) / (2 + eps)}
    expected["total"] = (expected["pos_aff"] + expected["neg_aff"]) / 2 + (expected["dp_fg"] + expected["dp_bg"]) / 2
    assert set(out) == set(expected)
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value, rel=1e-6), key
    empty = irn_loss(pos, neg, dp_fg, dp_bg, torch.zeros_like(bg_pos), torch.zeros_like(fg_pos), neg_label)
    assert empty["pos_aff"].item() == 0 and empty["dp_fg"].item() == 0  # no label: no term, finite


def test_edge_displacement_pads_to_crop_and_never_cuts(irn_net):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 38, 51)
    with torch.no_grad():
        edge, dp = irn_net.edge_displacement(x[0], 64)
        padded = torch.nn.functional.pad(torch.cat([x, x.flip(-1)]), (0, 64 - 51, 0, 64 - 38))
        e, d = irn_net(padded)
        assert torch.allclose(edge, torch.sigmoid(e[0, :, :10, :13] / 2 + e[1, :, :10, :13].flip(-1) / 2))
        assert torch.equal(dp, d[0, :, :10, :13])
        # an image larger than the crop is run whole (the original would cut it)
        edge, dp = irn_net.edge_displacement(x, 32)
    assert edge.shape == (1, 10, 13) and dp.shape == (2, 10, 13)
    assert ((edge > 0) & (edge < 1)).all()


# -- the CAM network and IRN's multi-scale CAMs ----------------------------------------------
@pytest.mark.parametrize("path", golden_cases("irn_cam_*.npz"))
def test_irn_cams_match_original(path, cam_net):
    g = np.load(path)
    image, label, scales = g["image"], g["label"], tuple(g["scales"].tolist())
    x = torch.from_numpy(irn_normalize(image))[None]
    with torch.no_grad():
        logits = cam_net(torch.cat([x, x.flip(-1)]))
    assert rel_err(logits, g["logits"]) <= NET_TOL

    for i, scale in enumerate(scales):
        scaled = image if scale == 1.0 else resize_image(image, scale)
        np.testing.assert_array_equal(scaled, g[f"image_scale_{i}"])

    seen: list[torch.Tensor] = []

    def cam_fn(batch: torch.Tensor) -> torch.Tensor:
        out = cam_net.cam(batch)
        seen.append(out)
        return out

    keys, strided, high_res = irn_multiscale_cam(cam_fn, image, label, irn_normalize, scales, stride=NET_STRIDE,
                                                 cam_stride=CAM_STRIDE)
    assert len(seen) == len(scales) and all(s.shape[0] == 2 for s in seen)  # one [image, flip] pack per scale
    for i, pack in enumerate(seen):  # IRN's CAM of a pack: image + its flip flipped back
        assert rel_err(pack[0] + pack[1].flip(-1), g[f"cam_scale_{i}"]) <= CAM_TOL, i
    np.testing.assert_array_equal(keys, g["keys"])
    height, width = image.shape[:2]
    assert strided.shape == (len(keys), *strided_size((height, width), NET_STRIDE)) == g["strided_cam"].shape
    assert high_res.shape == (len(keys), height, width) == g["high_res"].shape
    assert strided.dtype == high_res.dtype == np.float32
    assert rel_err(strided, g["strided_cam"]) <= CAM_TOL
    assert rel_err(high_res, g["high_res"]) <= CAM_TOL
    assert 0 <= high_res.min() and high_res.max() < 1


def test_fusion_orders_agree_and_psa_grid_is_the_default():
    """Undoing the flip before or after upsampling differs by rounding only; PSA's grid (the
    image size) and IRN's crop-from-a-larger-grid come from the same fusion."""
    rng = np.random.default_rng(0)
    cams = [(torch.from_numpy(rng.random((3, 4, 5), np.float32)), torch.from_numpy(rng.random((3, 4, 5), np.float32)))
            for _ in range(2)]
    label = np.array([1, 0, 1], np.float32)
    keys, psa = fuse_cams(cams, label, CamGrid((30, 37)))
    _, irn = fuse_cams(cams, label, CamGrid((30, 37)), flip_before_upsample=True)
    np.testing.assert_array_equal(keys, [0, 2])
    np.testing.assert_allclose(psa, irn, rtol=0, atol=1e-6)
    _, cropped = fuse_cams(cams, label, CamGrid((30, 37), (32, 40)))
    assert cropped.shape == (2, 30, 37) and not np.allclose(cropped, psa, atol=1e-3)
    _, cropped_irn = fuse_cams(cams, label, CamGrid((30, 37), (32, 40)), flip_before_upsample=True)
    np.testing.assert_allclose(cropped, cropped_irn, rtol=0, atol=1e-6)  # the flip is undone before the crop

    image = np.zeros((9, 11, 3), np.uint8)
    calls = []
    keys, (a, b) = multiscale_cams(lambda x: calls.append(1) or torch.ones(x.shape[0], 3, 2, 2), image, label,
                                   irn_normalize, (1.0, 0.5), [CamGrid((9, 11)), CamGrid((3, 3))])
    assert len(calls) == 2 and a.shape == (2, 9, 11) and b.shape == (2, 3, 3)


def test_cam_network_interface(cam_net):
    assert cam_net.normalization == "imagenet" and cam_net.feature_stride == 16
    torch.manual_seed(0)
    x = torch.randn(2, 3, 37, 50)
    with torch.no_grad():
        logits, cam = cam_net.forward_with_cam(x)
        assert torch.equal(logits, cam_net(x)) and torch.equal(cam, cam_net.cam(x))
        cam_net.train()
        try:
            assert torch.equal(cam_net(x), logits)  # no dropout, batch norm on running statistics
        finally:
            cam_net.eval()
        dense = torch.nn.functional.conv2d(cam_net.features(x), cam_net.classifier.weight).mean(dim=(2, 3))
    assert logits.shape == (2, 20) and cam.shape == (2, 20, 3, 4) and (cam >= 0).all()
    assert torch.allclose(dense, logits, rtol=1e-4, atol=1e-5)  # the CAM is the class conv applied densely


# -- training: frozen layers and parameter groups -------------------------------------------
def _names(net: torch.nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in net.named_parameters()}


def test_cam_network_trains_like_irn():
    net = ResNet50CAM(num_classes=5)
    net.eval()
    net.train()
    assert net.training
    names = _names(net)
    groups = net.param_groups()
    assert [(g.name, g.lr_mult, g.weight_decay) for g in groups] == [("backbone", 1.0, True),
                                                                   ("classifier", NEW_LAYER_LR_MULT, True)]
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    flat = [names[id(p)] for g in groups for p in g.params]
    assert len(flat) == len(set(flat)) and set(flat) == trainable
    assert [names[id(p)] for p in groups[1].params] == ["classifier.weight"]
    # IRN freezes conv1/bn1 and detaches after layer2: layer3 and layer4 (with BN affine) train
    assert {n.split(".")[1] for n in trainable if n.startswith("resnet50.")} == {"layer3", "layer4"}
    assert "resnet50.layer3.0.bn1.weight" in trainable
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)

    net(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for n, p in net.named_parameters() if n not in trainable)
    assert net.classifier.weight.grad is not None and net.resnet50.layer3[0].conv1.weight.grad is not None

    opt = build_optimizer(net, lr=0.1, weight_decay=1e-4, max_step=10, momentum=1e-4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 1.0])
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 1e-4]


def test_irn_network_trains_like_irn():
    net = ResNet50IRN()
    net.eval()
    net.train()
    assert net.training and net.mean_shift.training
    assert not any(m.training for m in net.backbone.modules())
    names = _names(net)
    groups = net.param_groups()
    assert [(g.name, g.lr_mult, g.weight_decay) for g in groups] == [("boundary", 1.0, True),
                                                                   ("displacement", NEW_LAYER_LR_MULT, True)]
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert not any(n.startswith("resnet50.") for n in trainable)
    assert {names[id(p)].split(".")[0] for p in groups[0].params} == {f"fc_edge{i}" for i in range(1, 7)}
    assert {names[id(p)].split(".")[0] for p in groups[1].params} == {f"fc_dp{i}" for i in range(1, 8)}
    flat = [names[id(p)] for g in groups for p in g.params]
    assert len(flat) == len(set(flat)) and set(flat) == trainable
    opt = build_optimizer(net, lr=0.1, weight_decay=1e-4, max_step=10, momentum=1e-4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 1.0])
    net.eval()
    assert not net.mean_shift.training
