"""Stage 5b: segment a split with the trained segmentation network and evaluate it (paper
Sec. 5 reports the network on VOC val).

Per image: mean softmax over ``segment.scales`` and flips, optionally a dense CRF on those
probabilities, argmax. Writes ``seg_pred/<image>.png`` (palette PNG); images already written
are skipped on a rerun. Evaluates the split's images that have ground truth.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from affinitynet import distributed
from affinitynet.algorithms.crf import dense_crf
from affinitynet.algorithms.segmentation import multiscale_probabilities, probabilities_to_label
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig
from affinitynet.data.images import save_label_png
from affinitynet.data.transforms import normalize
from affinitynet.models import build_segmentation_net
from affinitynet.stages.common import (check_image_size, checked_image, image_loader, load_trained, open_dataset,
                                      todo)
from affinitynet.stages.train_seg import seg_backbone
from affinitynet.training import image_to


def split_name(cfg: RunConfig) -> str:
    return cfg.segment.split or cfg.dataset.val_split


def run(cfg: RunConfig) -> dict[str, Any]:
    sc = cfg.segment
    _, device = distributed.setup(cfg.device)
    wd = WorkDir(cfg.workdir)
    voc = open_dataset(cfg)
    names = voc.split(split_name(cfg))
    net = build_segmentation_net(seg_backbone(cfg), voc.num_classes)
    load_trained(net, wd.segmentation / "final.pth", "segmentation network")
    net.eval().to(device)
    if sc.channels_last:
        net.to(memory_format=torch.channels_last)

    def score_fn(x: torch.Tensor) -> torch.Tensor:
        return net(image_to(x, device, sc.channels_last))

    def norm(image: np.ndarray) -> torch.Tensor:
        return normalize(image, net.normalization)

    pending = todo(names, lambda n: wd.png(wd.seg_pred, n), [wd.seg_pred])
    t0 = time.time()
    loader = image_loader(voc, pending, sc.num_workers)
    for name, image, _ in tqdm(loader, desc="segment", total=len(pending), dynamic_ncols=True,
                               disable=not distributed.current().is_main):
        image = checked_image(image)
        check_image_size(voc, name, image.shape[:2])
        probs = multiscale_probabilities(score_fn, image, norm, scales=sc.scales, flip=sc.flip, device=device)
        if sc.crf:
            probs = torch.from_numpy(dense_crf(image, probs.cpu().numpy()))
        save_label_png(wd.png(wd.seg_pred, name), probabilities_to_label(probs))
    distributed.barrier()
    result: dict[str, Any] = {"images": len(pending), "seconds": time.time() - t0, "split": split_name(cfg)}
    if distributed.current().is_main:
        from affinitynet.stages.evaluate import evaluate_folder

        eval_names = [n for n in names if voc.has_gt(n)]
        if eval_names:
            result.update(evaluate_folder(wd.seg_pred, voc, eval_names))
    return result
