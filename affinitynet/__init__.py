"""affinitynet: AffinityNet (Ahn & Kwak, CVPR 2018) pseudo labels from image-level labels."""

__version__ = "0.1.0"
