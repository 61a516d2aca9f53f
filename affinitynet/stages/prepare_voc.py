"""``affinitynet prepare-voc``: train_aug list, labels and (optionally) SBD masks for VOC 2012."""

from __future__ import annotations

from affinitynet.config import PrepareVOCConfig
from affinitynet.data.prepare_voc import prepare_voc
from affinitynet.errors import InputError


def run(cfg: PrepareVOCConfig) -> dict:
    """Prepare ``cfg.voc_root`` (+ ``cfg.sbd_root``) into ``cfg.out`` (default: the VOC root)."""
    if not cfg.voc_root:
        raise InputError("prepare-voc: no VOC folder given (--voc-root)")
    summary = prepare_voc(cfg.voc_root, cfg.sbd_root or None, cfg.out or None, cfg.convert_sbd)
    print(f"prepared {summary['out']}: train_aug {summary['train_aug']}, train {summary['train']}, "
          f"val {summary['val']} images"
          + (f"; {summary['sbd_converted']} SBD masks converted" if cfg.convert_sbd else ""))
    return summary
