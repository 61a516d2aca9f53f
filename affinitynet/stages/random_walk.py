"""Stage 4: random walk with the learned affinities -> pseudo labels (paper Sec. 3.4).

For each image: AffinityNet features of the image zero-padded to multiples of 8, pair
affinities within the radius, transition matrix T = D^-1 A^beta, t = 2^logt steps applied to
the stride-8 CAMs with background (1 - max)^alpha, bilinear upsampling, argmax, crop back.
Writes ``pseudo_labels/<image>.png`` and evaluates them on the evaluation split.

With ``method: irn``: IRN's semantic pseudo labels (``irn_labels`` section; IRN
make_sem_seg_labels.py): the boundary map of IRN's network, the CAMs on the stride-4 grid
(make-cam's stride-4 maps with ``make_cam.fusion: irn``, else the CAMs pooled), walked on the
boundary affinities (beta 10, 2^8 steps, radius 5, the sparse walk) and labelled against a
background plane of 0.25; beside each label its boundary map (``boundary/<image>.png``) and,
with ``irn_labels.instances``, its instance pseudo labels (``instances/<image>.json``, IRN
make_ins_seg_labels.py), scored as mask AP at IoU 0.5 where the dataset has
``SegmentationObject``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from affinitynet import artifacts, distributed, records
from affinitynet.algorithms.pairs import min_image_size
from affinitynet.algorithms.resize import WorkImage
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig
from affinitynet.console import announce_sizes, print_diagnostics
from affinitynet.data.images import save_label_png
from affinitynet.data.voc import VOCDataset, inference_names, open_dataset
from affinitynet.diagnostics import confident_regions, walk_growth, walk_warnings
from affinitynet.evaluation import evaluate_folder, evaluate_instances, instance_summary, names_with_gt
from affinitynet.inference import IRNLabeler, irn_walk_cams, load_trained, prepare, pseudo_label, walk_input
from affinitynet.models import build_affinity_net, build_irn_net
from affinitynet.per_image import check_image_size, for_each_image
from affinitynet.stage_table import section_of


def run(cfg: RunConfig) -> dict[str, Any]:
    _, device = distributed.setup(cfg.device)
    voc = open_dataset(cfg.dataset)
    one_image = irn_step(cfg, voc, device) if cfg.method == "irn" else psa_step(cfg, voc, device)
    wd = WorkDir(cfg.workdir)
    names = inference_names(cfg.dataset, voc)
    walk = "IRN's network and walk" if cfg.method == "irn" else "AffinityNet and the walk"
    announce_sizes(cfg.dataset, voc, names, "random-walk", f"{walk} run at that size")
    decision = records.start(cfg, "random_walk")
    workers = getattr(cfg, section_of("random_walk", cfg.method)).num_workers
    out_dirs = [wd.pseudo_labels]
    if cfg.method == "irn":
        out_dirs += [wd.boundary, wd.instances] if cfg.irn_labels.instances else [wd.boundary]
    result = for_each_image(voc, names, lambda n: wd.png(wd.pseudo_labels, n), out_dirs, one_image,
                            num_workers=workers, desc="random-walk")
    result.update(records.outcome(decision, "random_walk", result["images"]))
    if distributed.current().is_main:
        result.update(evaluate_pseudo_labels(cfg, voc, names))
    return result


ImageStep = Callable[[str, np.ndarray, np.ndarray], None]  # (name, native image, image label) -> writes its label


def irn_step(cfg: RunConfig, voc: VOCDataset, device: torch.device) -> ImageStep:
    """The per-image step of ``method: irn``: IRN's semantic pseudo label of an image."""
    wd = WorkDir(cfg.workdir)
    net = load_trained(build_irn_net(cfg.backbone_of(cfg.train_irn)), wd.affinity.final, "IRN's network")
    labeler = IRNLabeler(prepare(net, device, cfg.irn_labels.channels_last), cfg.irn_labels)

    def one_image(name: str, native: np.ndarray, label: np.ndarray) -> None:
        image = WorkImage(native, cfg.dataset.long_side)
        keys, maps, strided = artifacts.load_cam_and_strided(wd.cam_file(name), image.native_size, voc.num_classes)
        cams = irn_walk_cams(image, maps, strided)
        made = labeler.labels(image.image, keys, cams, instances=cfg.irn_labels.instances)
        artifacts.save_boundary(wd.png(wd.boundary, name), made.boundary)
        if made.detections is not None:
            found = made.detections
            artifacts.save_instances(wd.instance_file(name), name, image.masks_to_native(found.masks),
                                     found.classes, found.scores)
        save_label_png(wd.png(wd.pseudo_labels, name), image.label_to_native(made.semantic))

    return one_image


def psa_step(cfg: RunConfig, voc: VOCDataset, device: torch.device) -> ImageStep:
    """The per-image step of ``method: psa``: the random walk's pseudo label of an image."""
    rc, long_side = cfg.random_walk, cfg.dataset.long_side
    wd = WorkDir(cfg.workdir)
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

    return one_image


def evaluate_pseudo_labels(cfg: RunConfig, voc: VOCDataset, names: list[str]) -> dict[str, Any]:
    """The pseudo labels' scores on the evaluation split (where it has ground truth), and the
    walk's diagnostics with their warnings."""
    wd, result = WorkDir(cfg.workdir), {}
    scored = names_with_gt(voc, cfg.dataset.eval_split)
    if scored:
        result.update(evaluate_folder(wd.pseudo_labels, voc, scored))
    with_objects = [n for n in scored if voc.has_objects(n)]
    if cfg.method == "irn" and cfg.irn_labels.instances and with_objects:
        result["instances"] = evaluate_instances(wd.instances, voc, with_objects)
        print(f"random-walk: {instance_summary(result['instances'])}")
    diag = walk_growth(wd.pseudo_labels, wd.cam_pred, names, voc.classes)
    confident = confident_regions(wd.aff_labels, names, voc.classes) if wd.aff_labels.is_dir() else None
    result.update(diagnostics=diag, warnings=walk_warnings(diag, confident, cfg.method))
    print_diagnostics("random-walk", f"foreground {diag['coverage_before']['mean']:.0f} % of the image before the "
                      f"walk (CAM prediction), {diag['coverage_after']['mean']:.0f} % after; "
                      f"{diag['images_flooded']:.0f} % of images flooded by one class", result["warnings"])
    return result
