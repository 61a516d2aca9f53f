"""Stage 4: random walk with the learned affinities -> pseudo labels (paper Sec. 3.4).

For each image: AffinityNet features of the image zero-padded to multiples of 8, pair
affinities within the radius, transition matrix T = D^-1 A^beta, t = 2^logt steps applied to
the stride-8 CAMs with background (1 - max)^alpha, bilinear upsampling, argmax, crop back.
Writes ``pseudo_labels/<image>.png`` and evaluates them on the evaluation split.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from affinitynet import artifacts, distributed
from affinitynet.algorithms.random_walk import STRIDE, propagate_cams
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig
from affinitynet.data.images import save_label_png
from affinitynet.data.transforms import normalize
from affinitynet.models import build_affinity_net
from affinitynet.stages.common import (check_image_size, checked_image, image_loader, infer_names, load_trained,
                                      open_dataset, todo)
from affinitynet.training import image_to


def aff_backbone(cfg: RunConfig) -> str:
    return cfg.train_aff.backbone or cfg.train_cam.backbone


@torch.inference_mode()
def image_affinity(net: torch.nn.Module, image: np.ndarray, radius: int, device: torch.device,
                   channels_last: bool = False) -> torch.Tensor:
    """(n_offsets, n_from) affinities of an (H, W, 3) uint8 image on its padded stride-8 grid.
    ``channels_last``: NHWC input, for a network converted with ``net.to(memory_format=...)``."""
    x = normalize(image, net.normalization)[None]
    height, width = image.shape[:2]
    x = F.pad(x, (0, -width % STRIDE, 0, -height % STRIDE))  # zero padding, as the original
    return net.affinity(image_to(x, device, channels_last), radius).float()[0]


def run(cfg: RunConfig) -> dict[str, Any]:
    rc = cfg.random_walk
    _, device = distributed.setup(cfg.device)
    wd = WorkDir(cfg.workdir)
    voc = open_dataset(cfg)
    names = infer_names(cfg, voc)
    net = build_affinity_net(aff_backbone(cfg))
    load_trained(net, wd.affinity / "final.pth", "AffinityNet")
    net.eval().to(device)
    if rc.channels_last:
        net.to(memory_format=torch.channels_last)
    pending = todo(names, lambda n: wd.png(wd.pseudo_labels, n), [wd.pseudo_labels])
    t0 = time.time()
    loader = image_loader(voc, pending, 2)
    for name, image, _ in tqdm(loader, desc="random-walk", total=len(pending), dynamic_ncols=True,
                               disable=not distributed.current().is_main):
        image = checked_image(image)
        # the image's stride-8 grid must hold one pair of every offset (pairs.from_region)
        check_image_size(voc, name, image.shape[:2], min_height=STRIDE * (rc.radius - 1) + 1,
                         min_width=STRIDE * (2 * rc.radius - 2) + 1,
                         why=f"the random walk with radius {rc.radius}")
        keys, maps = artifacts.load_cam(wd.cam_file(name), image.shape[:2], voc.num_classes)
        aff = image_affinity(net, image, rc.radius, device, rc.channels_last)
        label, _ = propagate_cams(keys, maps, aff, image.shape[:2], alpha=rc.alpha, beta=rc.beta,
                                  logt=rc.logt, radius=rc.radius, num_classes=voc.num_classes,
                                  method=rc.method)
        save_label_png(wd.png(wd.pseudo_labels, name), label)
    distributed.barrier()
    result: dict[str, Any] = {"images": len(pending), "seconds": time.time() - t0}
    if distributed.current().is_main:
        from affinitynet.stages.evaluate import evaluate_folder

        eval_names = [n for n in voc.split(cfg.dataset.eval_split) if voc.has_gt(n)]
        if eval_names:
            result.update(evaluate_folder(wd.pseudo_labels, voc, eval_names))
    return result
