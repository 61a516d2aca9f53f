"""Conventions every layer shares (label maps and the feature grid).

Label maps (ground truth, CAM predictions, confident labels, pseudo labels, segmentations) are
(H, W) uint8: 0 = background, class index + 1 = object, ``IGNORE_INDEX`` = ignore / unsure. The
networks' features, CAMs and affinities live on the grid of output ``STRIDE`` 8: an H x W image,
zero-padded at the bottom/right to multiples of 8, has ceil(H/8) x ceil(W/8) cells, numbered
row by row (Ahn & Kwak 2018, Sec. 4.1). IRN's boundary map, displacement field, walk and
stride-4 CAMs live on the grid of ``IRN_STRIDE`` 4 (Ahn, Cho & Kwak 2019).
"""

IGNORE_INDEX = 255
STRIDE = 8
IRN_STRIDE = 4
