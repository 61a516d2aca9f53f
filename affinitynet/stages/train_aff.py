"""Stage 3: train AffinityNet on the confident labels (paper Sec. 3.3; PSA train_aff.py).

Each training sample is built as the original builds it (``data.voc.AffinitySampleDataset``):
the image and the CRF scores of both alphas that make-aff-labels kept are cropped together,
and the confident-label rule decides each stride-8 cell of the crop from its 8x8 block of
scores. Pairs of cells within the radius get affinity labels from that map: background pairs
and same-object pairs are positive, different-label pairs negative, pairs touching an unsure
(255) cell are left out. Loss = bg/4 + fg/4 + neg/2 (paper Eq. 4-6), each term averaged over
its own pairs. Writes ``affinity/checkpoint.pt``, ``final.pth``, ``log.jsonl``.

With ``method: irn`` it trains IRN's network instead (``train_irn`` section; IRN train_irn.py):
the boundary and displacement branches on the frozen backbone, from IRN's samples of the
confident labels (``transforms.IRNAugment``) and pairs within radius 10 on the stride-4 grid,
with IRN's losses; then, as IRN, the mean displacement over the training images becomes the
network's ``mean_shift``, which its inference subtracts.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from affinitynet import distributed, records, training
from affinitynet.algorithms.affinity import affinity_from_features, affinity_labels, affinity_loss
from affinitynet.algorithms.boundary import pair_labels
from affinitynet.algorithms.irn_loss import irn_loss, pair_losses
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig
from affinitynet.console import announce_sizes, training_sizes
from affinitynet.data.transforms import AffinityAugment, IRNAugment
from affinitynet.data.voc import AffinitySampleDataset, LabelMapDataset, VOCDataset, inference_names, open_dataset
from affinitynet.models import BoundaryDisplacementNet, build_affinity_net, build_irn_net


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


def irn_net_loss(model: torch.nn.Module, batch: Any, radius: int) -> tuple[torch.Tensor, dict[str, float]]:
    """IRN's loss on one batch (IRN train_irn.py): ``batch`` = (images (B, 3, H, W), stride-4
    confident labels (B, H/4, W/4) uint8, ...). The pairs' labels come from the label maps
    (``boundary.pair_labels``), their losses from the network's boundary logits and
    displacements (``irn_loss.pair_losses``), reduced as IRN does (``irn_loss.irn_loss``)."""
    image, grid_label = batch[0], batch[1]
    edge_out, dp_out = model(image)
    losses = pair_losses(edge_out.float(), dp_out.float(), radius)
    labels = [torch.stack(t).to(edge_out.device) for t in zip(*(pair_labels(g.cpu(), radius) for g in grid_label))]
    terms = irn_loss(*losses, *labels)
    return terms["total"], {k: float(v.detach()) for k, v in terms.items() if k != "total"}


@torch.no_grad()
def mean_displacement(net: BoundaryDisplacementNet, dataset: LabelMapDataset, crop: int,
                      device: torch.device) -> torch.Tensor:
    """IRN's ``mean_shift`` (train_irn.py): the mean of the network's raw displacement field
    (2,) over the images of ``dataset``, each placed at the top left of a ``crop`` x ``crop``
    canvas (zero padding), as IRN's inference sees it."""
    net.eval()
    net.mean_shift.running_mean.zero_()
    means = []
    for i in range(len(dataset)):
        x = dataset[i][0]
        canvas = torch.zeros(3, max(crop, x.shape[1]), max(crop, x.shape[2]))
        canvas[:, :x.shape[1], :x.shape[2]] = x
        means.append(net(canvas[None].to(device))[1].float().mean(dim=(0, 2, 3)).cpu())
    net.train()
    return torch.stack(means).mean(dim=0) if means else torch.zeros(2)


def run(cfg: RunConfig) -> dict[str, Any]:
    _, device = distributed.setup(cfg.device)
    voc = open_dataset(cfg.dataset)
    labelled = set(inference_names(cfg.dataset, voc))  # the images make-aff-labels labelled
    names = [n for n in voc.split(cfg.dataset.train_split) if n in labelled]
    decision, done = training.start(cfg, "train_aff")
    if done:
        return done
    fit = fit_irn if cfg.method == "irn" else fit_affinity_net
    result = fit(cfg, voc, names, device, resume=decision.status == "continued")
    return {**result, **records.outcome(decision, "train_aff", len(result["history"]))}


def fit_affinity_net(cfg: RunConfig, voc: VOCDataset, names: list[str], device: torch.device,
                     resume: bool) -> dict[str, Any]:
    """AffinityNet on the original's samples of the CRF scores (``method: psa``)."""
    ta, wd = cfg.train_aff, WorkDir(cfg.workdir)
    training.seed_everything(ta.seed)  # the heads' initial weights depend on the seed only
    net = training.initial_weights(build_affinity_net(cfg.backbone_of(ta)), cfg, ta)
    augment = AffinityAugment(ta.crop, ta.resize_long, ta.flip, ta.color_jitter, net.normalization)
    train_set = AffinitySampleDataset(voc, names, wd.crf_file, augment, cfg.dataset.long_side)
    announce_sizes(cfg.dataset, voc, names, "train-aff", training_sizes(ta))
    return training.fit(net, partial(affinity_net_loss, radius=ta.radius), train_set, None, ta, wd.affinity, device,
                        resume=resume, config=cfg, desc="train-aff")


def fit_irn(cfg: RunConfig, voc: VOCDataset, names: list[str], device: torch.device, resume: bool) -> dict[str, Any]:
    """IRN's network on IRN's samples of the confident labels (``method: irn``), its mean shift
    set before the final weights are written."""
    ti, wd = cfg.train_irn, WorkDir(cfg.workdir)
    training.seed_everything(ti.seed)
    net = training.initial_weights(build_irn_net(cfg.backbone_of(ti)), cfg, ti)
    augment = IRNAugment(ti.crop, ti.rescale, ti.flip, net.normalization)
    train_set = LabelMapDataset(voc, names, wd.aff_labels, augment, cfg.dataset.long_side)
    announce_sizes(cfg.dataset, voc, names, "train-aff", training_sizes(ti))
    plain = LabelMapDataset(voc, names, wd.aff_labels, None, cfg.dataset.long_side)

    def set_mean_shift(model: torch.nn.Module) -> None:
        model.mean_shift.running_mean.copy_(mean_displacement(model, plain, cfg.irn_labels.crop, device))

    return training.fit(net, partial(irn_net_loss, radius=ti.radius), train_set, None, ti, wd.affinity, device,
                        resume=resume, config=cfg, desc="train-aff (IRN)", finish=set_mean_shift)
