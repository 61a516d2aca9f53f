"""Networks: parameter names against the released models, outputs against the original code
under deterministic weights (golden data), and shapes/groups for every backbone."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from affinitynet.algorithms.affinity import affinity_from_features, dense_affinity
from affinitynet.errors import InputError
from affinitynet.models import (BACKBONES, backbone_keys, build_affinity_net, build_classifier,
                                build_optimizer, build_segmentation_net, load_backbone_state_dict,
                                load_state_dict_strict, remap_resnet50_state_dict)
from conftest import golden_cases, rel_err

NORMALIZATIONS = {"imagenet", "caffe_bgr"}


def build(net_name: str, device: str | None = None) -> torch.nn.Module:
    """``resnet38_cls`` -> build_classifier("resnet38"), ``vgg16_aff`` -> build_affinity_net(...)."""
    backbone, kind = net_name.rsplit("_", 1)
    assert kind in ("cls", "aff"), net_name
    with torch.device(device or "cpu"):
        return build_classifier(backbone) if kind == "cls" else build_affinity_net(backbone)


def deterministic_state_dict(net: torch.nn.Module, cache: dict | None = None) -> dict[str, torch.Tensor]:
    """The golden README's weight recipe: a numpy generator seeded by crc32 of each key.

    The draw depends only on the key and shape, so ``cache`` lets the classifier and the
    AffinityNet share their backbone tensors (ResNet-38 has 105M of them). A tensor registered
    under several keys (IRN's aliases, e.g. ``resnet50.conv1.weight`` = ``stage1.0.weight``) is
    drawn once, for its first key in state-dict order, and every alias gets that same tensor.
    """
    cache = {} if cache is None else cache
    state: dict[str, torch.Tensor] = {}
    first_key: dict[int, str] = {}  # id of the module's tensor -> its first key
    for key, tensor in net.state_dict(keep_vars=True).items():  # keep_vars: aliases are one object
        shape = tuple(tensor.shape)
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
            continue
        owner = first_key.setdefault(id(tensor), key)
        if owner != key:
            state[key] = state[owner]
            continue
        if (key, shape) not in cache:
            cache[key, shape] = torch.from_numpy(_draw(key, shape).astype(np.float32))
        state[key] = cache[key, shape]
    return state


def _draw(key: str, shape: tuple[int, ...]) -> np.ndarray:
    g = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    if len(shape) == 4:  # conv weights: fan-in scaling
        return g.standard_normal(shape) * np.sqrt(1.0 / np.prod(shape[1:]))
    if key.endswith("running_mean"):
        return 0.1 * g.standard_normal(shape)
    if key.endswith("running_var"):
        return g.uniform(0.5, 1.5, shape)
    if key.endswith(".weight"):  # BN / GroupNorm scales
        return 1.0 + 0.1 * g.standard_normal(shape)
    return 0.1 * g.standard_normal(shape)


def deterministic_net(net_name: str, cache: dict | None = None) -> torch.nn.Module:
    """Build on the meta device (no init cost) and assign the deterministic weights; eval mode."""
    net = build(net_name, "meta")
    net.load_state_dict(deterministic_state_dict(net, cache), assign=True)
    return net.eval()



# -- golden parity ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", golden_cases("state_dict_keys_*.json"))
def test_state_dict_keys_match_released_models(path):
    nets = json.loads(path.read_text())
    assert nets
    for net_name, expected in nets.items():
        net = build(net_name, "meta")
        got = [[k, list(v.shape)] for k, v in net.state_dict().items()]
        assert got == expected, net_name


def _backbone_of(stem: str) -> str:
    matches = [b for b in BACKBONES if stem.startswith(f"net_{b}_")]
    assert len(matches) == 1, stem
    return matches[0]


@pytest.mark.parametrize("path", golden_cases("net_*.npz"))
def test_networks_match_original(path):
    golden = np.load(path)
    backbone = _backbone_of(path.stem)
    x = torch.from_numpy(golden["input"])
    h, w = -(-x.shape[2] // 8), -(-x.shape[3] // 8)

    cache: dict = {}
    cls = deterministic_net(f"{backbone}_cls", cache)
    with torch.no_grad():
        logits, cam = cls.forward_with_cam(x)
        levels = cls.features_levels(x)
    assert rel_err(logits, golden["logits"]) <= 1e-4
    assert rel_err(cam, golden["cam"]) <= 1e-4
    assert cam.shape[2:] == (h, w)
    feat_keys = [k for k in golden.files if k.startswith("feat_")]
    assert sorted(feat_keys) == sorted(f"feat_{n}" for n in cls.level_names)
    for key in feat_keys:
        assert rel_err(levels[key[len("feat_"):]], golden[key]) <= 1e-4, key
    del cls, levels, logits, cam

    aff = deterministic_net(f"{backbone}_aff", cache)
    with torch.no_grad():
        features = aff(x)
    assert features.shape == (1, 448, h, w)
    assert rel_err(features, golden["aff_features"]) <= 1e-4
    with torch.no_grad():
        pair_aff = aff.affinity(x, 5)
    assert rel_err(pair_aff, golden["aff"]) <= 1e-4
    assert rel_err(dense_affinity(pair_aff[0], h, w, 5), golden["aff_dense"]) <= 1e-4


# -- checkpoint loading ----------------------------------------------------------------------
def test_load_state_dict_strict_reports_every_problem():
    net = build_classifier("vgg16")
    state = {k: v.clone() for k, v in net.state_dict().items()}
    load_state_dict_strict(net, state)  # exact fit loads

    bad = dict(state)
    del bad["conv3_2.bias"]
    bad["fc9.weight"] = torch.zeros(1)
    bad["fc8.weight"] = torch.zeros(21, 1024, 1, 1)
    with pytest.raises(InputError) as info:
        load_state_dict_strict(net, bad)
    message = str(info.value)
    assert "conv3_2.bias" in message and "fc9.weight" in message
    assert "fc8.weight" in message and "(21, 1024, 1, 1)" in message and "(20, 1024, 1, 1)" in message
    assert "\n" not in message


def test_load_state_dict_strict_values_and_old_checkpoints():
    net = build_classifier("tiny").eval()
    other = build_classifier("tiny")
    state = {k: v for k, v in other.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_state_dict_strict(net, state)  # PyTorch < 0.4.1 checkpoints lack num_batches_tracked
    for k, v in state.items():
        assert torch.equal(net.state_dict()[k], v), k


def test_affinity_net_initialised_from_classifier_backbone():
    cls = build_classifier("tiny")
    aff = build_affinity_net("tiny")
    f9_before = aff.f9.weight.detach().clone()
    unused = load_backbone_state_dict(aff, cls.state_dict())
    assert unused == ["fc8.weight"]
    for k, v in cls.state_dict().items():
        if k != "fc8.weight":
            assert torch.equal(aff.state_dict()[k], v), k
    assert torch.equal(aff.f9.weight, f9_before)  # head keeps its own initialisation
    with pytest.raises(InputError, match="stage5.0.weight"):
        load_backbone_state_dict(aff, {k: v for k, v in cls.state_dict().items() if "stage5.0" not in k})


def test_resnet50_loads_torchvision_and_irn_layouts():
    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.resnet50(weights=None).state_dict()
        net = build_classifier("resnet50")
    # torchvision ImageNet layout: fc.* dropped, the rest is our backbone exactly
    remapped = remap_resnet50_state_dict(tv)
    assert "fc.weight" not in remapped
    assert sorted(remapped) == sorted(k for k in net.state_dict() if k != "fc8.weight")
    # IRN res50_cam.pth layout (prefix, stage aliases, classifier), wrapped by DataParallel
    irn = {f"module.resnet50.{k}": v for k, v in tv.items() if not k.startswith("fc.")}
    irn.update({"module.stage1.0.weight": tv["conv1.weight"],
                "module.classifier.weight": torch.empty(20, 2048, 1, 1, device="meta")})
    load_state_dict_strict(net, remap_resnet50_state_dict(irn))


# -- every backbone --------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_shapes_and_groups(backbone):
    torch.manual_seed(0)
    batch = 1 if backbone == "resnet38" else 2  # ResNet-38 is the slow one; batching is shared code
    x = torch.randn(batch, 3, 75, 61)
    h, w = 10, 8  # ceil(75/8), ceil(61/8)

    cls = build_classifier(backbone, num_classes=7)
    assert cls.normalization in NORMALIZATIONS
    assert cls.feature_stride == 8
    _check_groups(cls, new_names={"fc8.weight"})
    cls.eval()
    with torch.no_grad():
        logits, cam = cls.forward_with_cam(x)
        levels = cls.features_levels(x)
        if backbone in ("tiny", "vgg16"):  # cheap ones: one pass == the separate calls
            assert torch.allclose(cls(x), logits, rtol=1e-4, atol=1e-5)
            assert torch.allclose(cls.cam(x), cam, rtol=1e-4, atol=1e-5)
    assert logits.shape == (batch, 7) and torch.isfinite(logits).all()
    assert cam.shape == (batch, 7, h, w) and (cam >= 0).all() and cam.max() > 0
    assert list(levels) == list(cls.level_names)
    for level, channels in zip(levels.values(), cls.level_channels):
        assert level.shape == (batch, channels, h, w)
    if not cls.conv_before_pool and not cls.cam_sqrt:
        # the CAM is the class conv applied densely: its unrectified mean is the logit
        dense = F.conv2d(levels[cls.level_names[2]], cls.fc8.weight).mean(dim=(2, 3))
        assert torch.allclose(dense, logits, rtol=1e-4, atol=1e-5)
    del cls, levels

    aff = build_affinity_net(backbone)
    assert aff.normalization == build_classifier(backbone, 5).normalization and aff.feature_stride == 8
    _check_groups(aff, new_names={"f8_3.weight", "f8_4.weight", "f8_5.weight", "f9.weight"})
    aff.eval()
    with torch.no_grad():
        features = aff(x)
    assert features.shape == (batch, 448, h, w)
    assert (features >= -1).all() and torch.isfinite(features).all()  # ELU output
    del aff, features

    seg = build_segmentation_net(backbone, num_classes=7)
    assert seg.normalization == build_classifier(backbone, 5).normalization and seg.feature_stride == 8
    _check_groups(seg, new_names={"fc8_seg.weight", "fc8_seg.bias"})
    assert set(backbone_keys(seg)) == set(seg.state_dict()) - {"fc8_seg.weight", "fc8_seg.bias"}
    seg.eval()
    with torch.no_grad():
        scores = seg(x)
    assert scores.shape == (batch, 8, h, w) and torch.isfinite(scores).all()  # 7 classes + background


def _check_groups(net: torch.nn.Module, new_names: set[str]) -> None:
    """In training mode the four groups partition the trainable parameters; new = the head."""
    net.train()
    names = {id(p): n for n, p in net.named_parameters()}
    groups = net.param_groups()
    assert len(groups) == 4
    flat = [names[id(p)] for g in groups for p in g]
    assert len(flat) == len(set(flat))
    assert set(flat) == {n for n, p in net.named_parameters() if p.requires_grad}
    assert {names[id(p)] for p in groups[2] + groups[3]} == new_names
    assert all(names[id(p)].endswith(".bias") for p in groups[1] + groups[3])


def test_train_mode_freezes_the_papers_layers():
    with torch.device("meta"):
        r38 = build_classifier("resnet38")
        vgg = build_affinity_net("vgg16")
        tiny = build_classifier("tiny")
    for net in (r38, vgg, tiny):
        net.eval()
        net.train()
        assert net.training
    frozen = {n for n, p in r38.named_parameters() if not p.requires_grad}
    assert {n for n in frozen if not n.split(".")[-2].startswith("bn")} == {
        n for n, _ in r38.named_parameters()
        if n.startswith(("conv1a.", "b2.", "b2_1.", "b2_2.")) and ".bn" not in n}
    bns = [m for m in r38.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training and not m.weight.requires_grad for m in bns)
    assert r38.b3.conv_branch2a.weight.requires_grad and r38.fc8.weight.requires_grad
    assert {n for n, p in vgg.named_parameters() if not p.requires_grad} == {
        f"conv{i}_{j}.{t}" for i in (1, 2) for j in (1, 2) for t in ("weight", "bias")}
    assert vgg.drop6.training
    tiny_bns = [m for m in tiny.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.training and m.weight.requires_grad for m in tiny_bns)  # trained from scratch


def test_tiny_learns_colour_cues_quickly():
    """The tiny backbone fits a small multi-label colour problem in a few seconds."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    colours = torch.tensor([[1.5, -1.5, -1.5], [-1.5, 1.5, -1.5], [-1.5, -1.5, 1.5], [1.5, 1.5, -1.5]])
    n, size, patch, steps = 24, 32, 12, 40
    x = 0.3 * torch.randn(n, 3, size, size, generator=g)
    y = torch.zeros(n, len(colours))
    for i in range(n):
        for c in torch.randperm(len(colours), generator=g)[: 1 + i % 2]:
            top, left = torch.randint(0, size - patch, (2,), generator=g).tolist()
            x[i, :, top:top + patch, left:left + patch] = colours[c, :, None, None]
            y[i, c] = 1
    net = build_classifier("tiny", num_classes=len(colours))
    opt = build_optimizer(net, lr=0.01, weight_decay=5e-4, max_step=steps, momentum=0.9)
    for _ in range(steps):
        loss = F.multilabel_soft_margin_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = ((net(x) > 0).float() == y).float().mean().item()
    assert accuracy >= 0.95


@pytest.mark.parametrize("path", golden_cases("random_walk_*.npz"))
def test_random_walk_affinities_match_original(path):
    """The affinities the random-walk stage computes for an image (normalise, zero-pad to
    multiples of 8, AffinityNet, exp(-mean|df|) on its output) are the original's: for the
    ``net`` cases with the ResNet-38 AffinityNet under the deterministic weights, for the
    ``image`` cases with the README's image features."""
    from affinitynet.inference import image_affinity, prepare

    g = np.load(path)
    source = str(g["affinity_source"])
    if source == "net":
        net = deterministic_net("resnet38_aff")
        aff = image_affinity(prepare(net, torch.device("cpu")), g["image"], 5)
        # the stage's input is the golden input: normalised, zero-padded at bottom/right
        with torch.no_grad():
            assert rel_err(net.affinity(torch.from_numpy(g["input"]), 5)[0], g["aff"][0]) <= 1e-4
    else:
        assert source == "image", source
        aff = affinity_from_features(3 * F.avg_pool2d(torch.from_numpy(g["input"]), 8), 5)[0]
    assert rel_err(aff, g["aff"][0]) <= 1e-4
    h, w = -(-g["image"].shape[0] // 8), -(-g["image"].shape[1] // 8)
    assert rel_err(dense_affinity(aff, h, w, 5), g["aff_dense"]) <= 1e-4
