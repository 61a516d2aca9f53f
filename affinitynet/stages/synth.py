"""``affinitynet synth OUT``: write the built-in synthetic dataset in VOC layout."""

from __future__ import annotations

from affinitynet.config import SynthConfig
from affinitynet.data.synthetic import generate
from affinitynet.errors import InputError


def run(cfg: SynthConfig) -> dict:
    """Generate ``cfg.train`` + ``cfg.val`` images under ``cfg.out``; return the summary dict."""
    if not cfg.out:
        raise InputError("synth: no output folder given")
    summary = generate(cfg.out, cfg.train, cfg.val, cfg.seed, family=cfg.family, scale=cfg.scale)
    print(f"synthetic dataset ({summary['family']}): {summary['train']} train + {summary['val']} val images, "
          f"{len(summary['classes'])} classes ({', '.join(summary['classes'])}) in {summary['root']}")
    return summary
