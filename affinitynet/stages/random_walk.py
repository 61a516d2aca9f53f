"""Stage 4: random walk with the learned affinities -> pseudo labels (paper Sec. 3.4).

For each image: AffinityNet features of the image zero-padded to multiples of 8, pair
affinities within the radius, transition matrix T = D^-1 A^beta, t = 2^logt steps applied to
the stride-8 CAMs with background (1 - max)^alpha, bilinear upsampling, argmax, crop back.
Writes ``pseudo_labels/<image>.png`` and evaluates them on the evaluation split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from affinitynet import artifacts, distributed
from affinitynet.algorithms.random_walk import propagate_cams
from affinitynet.artifacts import WorkDir
from affinitynet.common import (backbone_of, for_each_image, image_to, inference_net, infer_names, load_trained,
                                open_dataset, torch_threads)
from affinitynet.config import RunConfig
from affinitynet.conventions import STRIDE
from affinitynet.data.images import save_label_png
from affinitynet.data.transforms import normalize
from affinitynet.evaluation import evaluate_folder, names_with_gt
from affinitynet.models import build_affinity_net


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
    net = load_trained(build_affinity_net(backbone_of(cfg, cfg.train_aff)), wd.affinity.final, "AffinityNet")
    inference_net(net, device, rc.channels_last)

    def one_image(name: str, image: np.ndarray, label: np.ndarray) -> None:
        keys, maps = artifacts.load_cam(wd.cam_file(name), image.shape[:2], voc.num_classes)
        aff = image_affinity(net, image, rc.radius, device, rc.channels_last)
        # 256 short sparse products: one thread, as the cores serve the loader workers too
        with torch_threads(1 if device.type == "cpu" else torch.get_num_threads()):
            label, _ = propagate_cams(keys, maps, aff, image.shape[:2], alpha=rc.alpha, beta=rc.beta,
                                      logt=rc.logt, radius=rc.radius, num_classes=voc.num_classes,
                                      method=rc.method)
        save_label_png(wd.png(wd.pseudo_labels, name), label)

    # the image's stride-8 grid must hold one pair of every offset (pairs.from_region)
    min_size = (STRIDE * (rc.radius - 1) + 1, STRIDE * (2 * rc.radius - 2) + 1)
    result = for_each_image(voc, infer_names(cfg, voc), lambda n: wd.png(wd.pseudo_labels, n), [wd.pseudo_labels],
                            one_image, num_workers=2, desc="random-walk", min_size=min_size,
                            why=f"the random walk with radius {rc.radius}")
    if distributed.current().is_main:
        names = names_with_gt(voc, cfg.dataset.eval_split)
        if names:
            result.update(evaluate_folder(wd.pseudo_labels, voc, names))
    return result
