"""Stage 4: random walk with the learned affinities -> pseudo labels (paper Sec. 3.4).

For each image: AffinityNet features of the image zero-padded to multiples of 8, pair
affinities within the radius, transition matrix T = D^-1 A^beta, t = 2^logt steps applied to
the stride-8 CAMs with background (1 - max)^alpha, bilinear upsampling, argmax, crop back.
Writes ``pseudo_labels/<image>.png`` and evaluates them on the evaluation split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from affinitynet import artifacts, distributed, records
from affinitynet.algorithms.pairs import min_image_size
from affinitynet.algorithms.resize import WorkImage
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig
from affinitynet.console import announce_sizes, print_diagnostics
from affinitynet.data.images import save_label_png
from affinitynet.data.voc import VOCDataset, inference_names, open_dataset
from affinitynet.diagnostics import confident_regions, walk_growth, walk_warnings
from affinitynet.evaluation import evaluate_folder, names_with_gt
from affinitynet.inference import load_trained, prepare, pseudo_label, walk_input
from affinitynet.models import build_affinity_net
from affinitynet.per_image import check_image_size, for_each_image


def run(cfg: RunConfig) -> dict[str, Any]:
    rc, long_side = cfg.random_walk, cfg.dataset.long_side
    _, device = distributed.setup(cfg.device)
    wd = WorkDir(cfg.workdir)
    voc = open_dataset(cfg.dataset)
    net = load_trained(build_affinity_net(cfg.backbone_of(cfg.train_aff)), wd.affinity.final, "AffinityNet")
    affinity_net = prepare(net, device, rc.channels_last)

    def one_image(name: str, native: np.ndarray, label: np.ndarray) -> None:
        image = WorkImage(native, long_side)
        keys, maps = artifacts.load_cam(wd.cam_file(name), image.native_size, voc.num_classes)
        check_image_size(voc, name, image.size, min_image_size(rc.radius), f"the random walk with radius {rc.radius}",
                         hint=f"at its working size (dataset.long_side {long_side})" if image.factor != 1
                         else "set dataset.long_side to work at a larger size")
        label = pseudo_label(image, keys, walk_input(affinity_net, image, maps, rc.radius), rc)
        save_label_png(wd.png(wd.pseudo_labels, name), label)

    names = inference_names(cfg.dataset, voc)
    announce_sizes(cfg.dataset, voc, names, "random-walk", "AffinityNet and the walk run at that size")
    decision = records.start(cfg, "random_walk")
    result = for_each_image(voc, names, lambda n: wd.png(wd.pseudo_labels, n), [wd.pseudo_labels], one_image,
                            num_workers=rc.num_workers, desc="random-walk")
    result.update(records.outcome(decision, "random_walk", result["images"]))
    if distributed.current().is_main:
        result.update(evaluate_pseudo_labels(cfg, voc, names))
    return result


def evaluate_pseudo_labels(cfg: RunConfig, voc: VOCDataset, names: list[str]) -> dict[str, Any]:
    """The pseudo labels' scores on the evaluation split (where it has ground truth), and the
    walk's diagnostics with their warnings."""
    wd, result = WorkDir(cfg.workdir), {}
    scored = names_with_gt(voc, cfg.dataset.eval_split)
    if scored:
        result.update(evaluate_folder(wd.pseudo_labels, voc, scored))
    diag = walk_growth(wd.pseudo_labels, wd.cam_pred, names, voc.classes)
    confident = confident_regions(wd.aff_labels, names, voc.classes) if wd.aff_labels.is_dir() else None
    result.update(diagnostics=diag, warnings=walk_warnings(diag, confident))
    print_diagnostics("random-walk", f"foreground {diag['coverage_before']['mean']:.0f} % of the image before the "
                      f"walk (CAM prediction), {diag['coverage_after']['mean']:.0f} % after; "
                      f"{diag['images_flooded']:.0f} % of images flooded by one class", result["warnings"])
    return result
