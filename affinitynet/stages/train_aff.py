"""Stage 3: train AffinityNet on the confident labels (paper Sec. 3.3; PSA train_aff.py).

Pairs of stride-8 cells within the radius get affinity labels from the cropped confident label
map: background pairs and same-object pairs are positive, different-label pairs negative,
pairs touching an unsure (255) cell are left out. Loss = bg/4 + fg/4 + neg/2 (paper Eq. 4-6),
each term averaged over its own pairs. Writes ``affinity/checkpoint.pt``, ``final.pth``,
``log.jsonl``.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from affinitynet import distributed, training
from affinitynet.algorithms.affinity import affinity_from_features, affinity_labels, affinity_loss
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig
from affinitynet.data.transforms import AffinityTransform
from affinitynet.data.voc import AffinityDataset
from affinitynet.models import build_affinity_net
from affinitynet.stages.common import infer_names, open_dataset
from affinitynet.stages.random_walk import aff_backbone


def build(cfg: RunConfig) -> torch.nn.Module:
    """AffinityNet with its initial backbone weights: a weights file when given, else the
    trained classifier (the paper starts from ImageNet weights; on data without them, e.g. the
    synthetic set, the classifier's backbone is the better start)."""
    ta = cfg.train_aff
    net = build_affinity_net(aff_backbone(cfg))
    if ta.weights:
        training.load_backbone_weights(net, ta.weights)
    elif ta.init_from_classifier:
        final = WorkDir(cfg.workdir).classifier / "final.pth"
        if final.exists():
            training.load_backbone_weights(net, str(final))
    return net


def affinity_net_loss(model: torch.nn.Module, batch: Any, radius: int) -> tuple[torch.Tensor, dict[str, float]]:
    """AffinityNet's loss on one batch (paper Eq. 1, 4-7).

    ``batch`` = (images (B, 3, H, W), stride-8 label maps (B, H/8, W/8) uint8, ...). The pair
    affinities are exp(-mean |f_i - f_j|) on the network's output features (the ELU of f9, as
    the original), their labels come from the label maps; see ``affinity_loss``. The network is
    called through ``forward`` (DDP synchronises gradients only there).
    """
    image, grid_label = batch[0], batch[1]
    aff = affinity_from_features(model(image).float(), radius)
    bg_pos, fg_pos, neg = (t.to(aff.device) for t in affinity_labels(grid_label, radius))
    return affinity_loss(aff, bg_pos, fg_pos, neg)


def run(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    ta = cfg.train_aff
    dist_info, device = distributed.setup(cfg.device)
    wd = WorkDir(cfg.workdir)
    voc = open_dataset(cfg)
    training.seed_everything(ta.seed)  # the heads' initial weights depend on the seed only
    net = build(cfg)
    transform = AffinityTransform(crop=ta.crop, resize_long=ta.resize_long, color_jitter=ta.color_jitter,
                                  normalization=net.normalization)
    names = [n for n in voc.split(cfg.dataset.train_split) if n in set(infer_names(cfg, voc))]
    train_set = AffinityDataset(voc, names, wd.aff_labels, transform)

    channels_last = ta.channels_last and device.type == "cuda"

    def loss_fn(model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        image = training.image_to(batch[0], device, channels_last)
        return affinity_net_loss(model, (image, batch[1].to(device)), ta.radius)

    t0 = time.time()
    result = training.fit_stage(
        ta, net=net, train_set=train_set, val_set=None, loss_fn=loss_fn, out_dir=wd.affinity,
        device=device, dist_info=dist_info, resume=resume, config=cfg, desc="train-aff",
        channels_last=channels_last,
    )
    result["seconds"] = time.time() - t0
    return result
