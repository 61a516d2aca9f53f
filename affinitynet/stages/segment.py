"""Stage 5b: segment a split with the trained segmentation network and evaluate it (paper
Sec. 5 reports the network on VOC val).

Per image: mean softmax over ``segment.scales`` (of the working size) and flips, optionally a
dense CRF on those probabilities, argmax (``inference.Segmenter``, which ``affinitynet
predict`` uses too). Writes ``seg_pred/<image>.png`` (palette PNG); images already written
are skipped on a rerun. Evaluates the split's images that have ground truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from affinitynet import distributed, records
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig
from affinitynet.console import announce_sizes
from affinitynet.data.images import save_label_png
from affinitynet.data.voc import open_dataset
from affinitynet.evaluation import evaluate_folder, names_with_gt
from affinitynet.inference import Segmenter, load_trained, prepare
from affinitynet.models import build_segmentation_model
from affinitynet.per_image import for_each_image


def run(cfg: RunConfig) -> dict[str, Any]:
    sc, ts = cfg.segment, cfg.train_seg
    split = sc.split or cfg.dataset.val_split
    _, device = distributed.setup(cfg.device)
    wd = WorkDir(cfg.workdir)
    voc = open_dataset(cfg.dataset)
    net = build_segmentation_model(ts.model, cfg.backbone_of(ts), voc.num_classes, ts.aux_loss)
    load_trained(net, wd.segmentation.final, "segmentation network")
    segmenter = Segmenter(prepare(net, device, sc.channels_last), voc.classes, sc, cfg.dataset.long_side)

    def one_image(name: str, image: np.ndarray, label: np.ndarray) -> None:
        save_label_png(wd.png(wd.seg_pred, name), segmenter(image))

    names = voc.split(split)
    announce_sizes(cfg.dataset, voc, names, "segment", f"scales {', '.join(map(str, sc.scales))} of that size")
    decision = records.start(cfg, "segment")
    result = for_each_image(voc, names, lambda n: wd.png(wd.seg_pred, n), [wd.seg_pred], one_image,
                            num_workers=sc.num_workers, desc="segment")
    result.update(records.outcome(decision, "segment", result["images"]))
    result["split"] = split
    if distributed.current().is_main:
        scored = names_with_gt(voc, split)
        if scored:
            result.update(evaluate_folder(wd.seg_pred, voc, scored))
    return result
