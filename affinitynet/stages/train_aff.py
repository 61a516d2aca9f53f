"""Stage 3: train AffinityNet on the confident labels (paper Sec. 3.3; PSA train_aff.py).

Each training sample is built as the original builds it (``data.voc.AffinitySampleDataset``):
the image and the CRF scores of both alphas that make-aff-labels kept are cropped together,
and the confident-label rule decides each stride-8 cell of the crop from its 8x8 block of
scores. Pairs of cells within the radius get affinity labels from that map: background pairs
and same-object pairs are positive, different-label pairs negative, pairs touching an unsure
(255) cell are left out. Loss = bg/4 + fg/4 + neg/2 (paper Eq. 4-6), each term averaged over
its own pairs. Writes ``affinity/checkpoint.pt``, ``final.pth``, ``log.jsonl``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from affinitynet import distributed, records, training
from affinitynet.algorithms.affinity import affinity_from_features, affinity_labels, affinity_loss
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig
from affinitynet.console import announce_sizes, training_sizes
from affinitynet.data.transforms import AffinityAugment
from affinitynet.data.voc import AffinitySampleDataset, inference_names, open_dataset
from affinitynet.models import build_affinity_net


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


def run(cfg: RunConfig) -> dict[str, Any]:
    ta = cfg.train_aff
    _, device = distributed.setup(cfg.device)
    wd = WorkDir(cfg.workdir)
    voc = open_dataset(cfg.dataset)
    labelled = set(inference_names(cfg.dataset, voc))  # the images make-aff-labels labelled
    names = [n for n in voc.split(cfg.dataset.train_split) if n in labelled]
    decision, done = training.start(cfg, "train_aff")
    if done:
        return done
    training.seed_everything(ta.seed)  # the heads' initial weights depend on the seed only
    net = training.initial_weights(build_affinity_net(cfg.backbone_of(ta)), cfg, ta)
    augment = AffinityAugment(ta.crop, ta.resize_long, ta.flip, ta.color_jitter, net.normalization)
    train_set = AffinitySampleDataset(voc, names, wd.crf_file, augment, cfg.dataset.long_side)
    announce_sizes(cfg.dataset, voc, names, "train-aff", training_sizes(ta))
    result = training.fit(net, partial(affinity_net_loss, radius=ta.radius), train_set, None, ta, wd.affinity, device,
                          resume=decision.status == "continued", config=cfg, desc="train-aff")
    return {**result, **records.outcome(decision, "train_aff", len(result["history"]))}
