"""``affinitynet prepare-coco``: MS-COCO 2014 as a VOC-layout dataset (split lists, labels,
image links, semantic ground truth); the rules are in ``affinitynet.data.prepare_coco``."""

from __future__ import annotations

from affinitynet.config import PrepareCOCOConfig
from affinitynet.data.prepare_coco import prepare_coco
from affinitynet.errors import InputError


def run(cfg: PrepareCOCOConfig) -> dict:
    """Prepare ``cfg.coco_root`` into ``cfg.out`` (default: the COCO root)."""
    if not cfg.coco_root:
        raise InputError("prepare-coco: no COCO folder given (--coco-root)")
    summary = prepare_coco(cfg.coco_root, cfg.out or None, processes=cfg.processes)
    links = summary["links"]
    made = ", ".join(f"{n} {kind}s" for kind, n in links.items() if n and kind != "kept") or "none new"
    print(f"prepared {summary['out']}: {summary['classes']} classes; train {summary['train']} images "
          f"({summary['no_objects_train']} without objects left out), val {summary['val']} "
          f"({summary['no_objects_val']} left out); masks written: "
          f"{summary['masks_written_train'] + summary['masks_written_val']}; image links: {made}")
    return summary
