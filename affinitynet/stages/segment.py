"""Stage 5b: segment a split with the trained segmentation network and evaluate it (paper
Sec. 5 reports the network on VOC val).

Per image: mean softmax over ``segment.scales`` and flips, optionally a dense CRF on those
probabilities, argmax. Writes ``seg_pred/<image>.png`` (palette PNG); images already written
are skipped on a rerun. Evaluates the split's images that have ground truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from affinitynet import distributed
from affinitynet.algorithms.crf import dense_crf
from affinitynet.algorithms.segmentation import multiscale_probabilities, probabilities_to_label
from affinitynet.artifacts import WorkDir
from affinitynet.common import (announce_sizes, backbone_of, for_each_image, image_to, inference_net, load_trained,
                                open_dataset, working_scale)
from affinitynet.config import RunConfig
from affinitynet.data.images import save_label_png
from affinitynet.data.transforms import normalize
from affinitynet.evaluation import evaluate_folder, names_with_gt
from affinitynet.models import build_segmentation_net


def run(cfg: RunConfig) -> dict[str, Any]:
    sc = cfg.segment
    split = sc.split or cfg.dataset.val_split
    _, device = distributed.setup(cfg.device)
    wd = WorkDir(cfg.workdir)
    voc = open_dataset(cfg)
    net = build_segmentation_net(backbone_of(cfg, cfg.train_seg), voc.num_classes)
    inference_net(load_trained(net, wd.segmentation.final, "segmentation network"), device, sc.channels_last)

    def one_image(name: str, image: np.ndarray, label: np.ndarray) -> None:
        factor = working_scale(cfg.dataset.long_side, image.shape[:2])
        probs = multiscale_probabilities(lambda x: net(image_to(x, device, sc.channels_last)), image,
                                         lambda im: normalize(im, net.normalization),
                                         scales=[s * factor for s in sc.scales], flip=sc.flip, device=device)
        if sc.crf:
            probs = torch.from_numpy(dense_crf(image, probs.cpu().numpy(), sc.crf_iterations))
        save_label_png(wd.png(wd.seg_pred, name), probabilities_to_label(probs))

    names = voc.split(split)
    announce_sizes(cfg, voc, names, "segment", f"scales {', '.join(map(str, sc.scales))} of that size")
    result = for_each_image(voc, names, lambda n: wd.png(wd.seg_pred, n), [wd.seg_pred], one_image,
                            num_workers=sc.num_workers, desc="segment")
    result["split"] = split
    if distributed.current().is_main:
        names = names_with_gt(voc, split)
        if names:
            result.update(evaluate_folder(wd.seg_pred, voc, names))
    return result
