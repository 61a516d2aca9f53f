"""The Python API, for notebooks and scripts: trained networks on images in memory.

    from affinitynet.api import load_segmenter, load_pseudo_labeler
    seg = load_segmenter("work/demo")              # a work folder, or train-seg's final.pth
    label = seg(image)                              # (H, W) uint8: 0 background, c + 1 = seg.classes[c]
    probs = seg.probabilities(image)                # (classes + 1, H, W) float32, background first
    pl = load_pseudo_labeler("work/demo")           # the run's classifier + AffinityNet
    keys, cams = pl.cams(image, ["dots"])           # class indices (k,), CAMs (k, H, W) in [0, 1]
    pseudo = pl.pseudo_label(image, ["dots"])       # (H, W) uint8 random-walk pseudo label
    irn = load_irn_labeler("res50_irn.pth")         # IRN's released network, IRN's settings
    label = irn.semantic_label(image, keys, cams)   # IRN's pseudo label from any CAMs (sparse walk)
    found = irn.instances(image, keys, cams)        # .masks (N, H, W), .classes (N,), .scores (N,)

``image`` is a numpy array ((H, W, 3) RGB, grey or RGBA; uint8 or float in [0, 1]) or a PIL
image; results are at its size. Each call does what the pipeline's stage does for one image
(``affinitynet.inference``), with the run's settings. ``colorize(label)`` gives the VOC-palette
picture of a label map.
"""

from affinitynet.data.palette import colorize
from affinitynet.inference import (IRNLabeler, PseudoLabeler, Segmenter, load_irn_labeler, load_pseudo_labeler,
                                   load_segmenter)

__all__ = ["load_segmenter", "load_pseudo_labeler", "load_irn_labeler", "Segmenter", "PseudoLabeler", "IRNLabeler",
           "colorize"]
