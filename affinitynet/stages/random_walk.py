"""Stage 4: random walk with the learned affinities -> pseudo labels (paper Sec. 3.4).

For each image: AffinityNet features of the image zero-padded to multiples of 8, pair
affinities within the radius, transition matrix T = D^-1 A^beta, t = 2^logt steps applied to
the stride-8 CAMs with background (1 - max)^alpha, bilinear upsampling, argmax, crop back.
Writes ``pseudo_labels/<image>.png`` and evaluates them on the evaluation split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from affinitynet import artifacts, distributed
from affinitynet.algorithms.resize import scaled_size
from affinitynet.artifacts import WorkDir
from affinitynet.common import (announce_sizes, backbone_of, check_image_size, for_each_image, inference_net,
                                infer_names, load_trained, open_dataset, report, working_scale)
from affinitynet.config import RunConfig
from affinitynet.conventions import STRIDE
from affinitynet.data.images import save_label_png
from affinitynet.diagnostics import walk_growth, walk_warnings
from affinitynet.evaluation import evaluate_folder, names_with_gt
from affinitynet.inference import pseudo_label_of_image
from affinitynet.models import build_affinity_net


def run(cfg: RunConfig) -> dict[str, Any]:
    rc = cfg.random_walk
    _, device = distributed.setup(cfg.device)
    wd = WorkDir(cfg.workdir)
    voc = open_dataset(cfg)
    net = load_trained(build_affinity_net(backbone_of(cfg, cfg.train_aff)), wd.affinity.final, "AffinityNet")
    inference_net(net, device, rc.channels_last)

    # the image's stride-8 grid must hold one pair of every offset (pairs.from_region)
    min_size = (STRIDE * (rc.radius - 1) + 1, STRIDE * (2 * rc.radius - 2) + 1)

    def one_image(name: str, image: np.ndarray, label: np.ndarray) -> None:
        keys, maps = artifacts.load_cam(wd.cam_file(name), image.shape[:2], voc.num_classes)
        factor = working_scale(cfg.dataset.long_side, image.shape[:2])
        check_image_size(voc, name, scaled_size(image.shape[:2], factor), min_size,
                         f"the random walk with radius {rc.radius}",
                         hint=f"at its working size (dataset.long_side {cfg.dataset.long_side})" if factor != 1
                         else "set dataset.long_side to work at a larger size")
        label = pseudo_label_of_image(net, image, keys, maps, rc, cfg.dataset.long_side, voc.num_classes, device,
                                      rc.channels_last)
        save_label_png(wd.png(wd.pseudo_labels, name), label)

    names = infer_names(cfg, voc)
    announce_sizes(cfg, voc, names, "random-walk", "AffinityNet and the walk run at that size")
    result = for_each_image(voc, names, lambda n: wd.png(wd.pseudo_labels, n), [wd.pseudo_labels], one_image,
                            num_workers=2, desc="random-walk")
    if distributed.current().is_main:
        scored = names_with_gt(voc, cfg.dataset.eval_split)
        if scored:
            result.update(evaluate_folder(wd.pseudo_labels, voc, scored))
        diag = walk_growth(wd.pseudo_labels, wd.cam_pred, names, voc.classes)
        result.update(diagnostics=diag, warnings=walk_warnings(diag))
        report("random-walk", f"foreground {diag['coverage_before']['mean']:.0f} % of the image before the walk "
               f"(CAM prediction), {diag['coverage_after']['mean']:.0f} % after; {diag['images_flooded']:.0f} % of "
               "images flooded by one class", result["warnings"])
    return result
