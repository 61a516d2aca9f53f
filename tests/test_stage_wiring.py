"""What the stages hand to the algorithms, checked one function at a time: the loss each
training stage optimises and the CRF alphas of the confident labels. The full pipeline would
notice a wrong wiring only as a worse number; these tests name it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from affinitynet.algorithms.crf import confident_labels
from affinitynet.algorithms.pairs import pair_indices
from affinitynet.algorithms.resize import WorkImage
from affinitynet.config import AffLabelsConfig
from affinitynet.inference import confident_label_map, crf_scores
from affinitynet.models import build_affinity_net
from affinitynet.stages.train_aff import affinity_net_loss
from affinitynet.stages.train_cam import classification_loss
from conftest import golden_cases


class FixedLogits(torch.nn.Module):
    """A 'network' whose logits are given, whatever the image."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]]


def test_train_cam_loss_is_the_multilabel_soft_margin_of_the_logits():
    logits = [[0.0, 2.0, -1.0], [1.5, -3.0, 0.5]]
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    loss, _ = classification_loss(FixedLogits(logits), (torch.zeros(2, 3, 8, 8), labels))
    # by hand: mean over images and classes of -log sigmoid(z) (y = 1) or -log(1 - sigmoid(z)) (y = 0)
    # image 1: log 2, log(1 + e^2), log(1 + e^-1); image 2: log(1 + e^1.5), log(1 + e^3), log(1 + e^-0.5)
    by_hand = ((math.log(2) + math.log1p(math.e ** 2) + math.log1p(math.e ** -1)) / 3
               + (math.log1p(math.e ** 1.5) + math.log1p(math.e ** 3) + math.log1p(math.e ** -0.5)) / 3) / 2
    assert by_hand == pytest.approx(1.3929024154762901, rel=1e-12)
    assert float(loss) == pytest.approx(by_hand, rel=1e-6)


def test_train_aff_loss_uses_the_affinity_of_the_network_output():
    """Eq. 1 on the features AffinityNet returns (no further ELU), the labels of Eq. 2-3 and the
    weighting bg/4 + fg/4 + neg/2 of Eq. 4-7, written out with the original's index lists."""
    torch.manual_seed(0)
    net = build_affinity_net("tiny").eval()
    image = torch.randn(2, 3, 80, 96)
    grid = torch.zeros(2, 10, 12, dtype=torch.uint8)
    grid[:, 2:8, 3:9] = 3  # an object
    grid[1, :, 10:] = 255  # unsure cells
    grid[0, 0, :4] = 1  # a second object
    with torch.no_grad():
        loss, parts = affinity_net_loss(net, (image, grid), radius=5)
        features = net(image).flatten(2)  # (B, 448, h*w)
    ind_from, ind_to = pair_indices(10, 12, 5)
    src = features[:, :, torch.from_numpy(np.tile(ind_from, 34))]
    dst = features[:, :, torch.from_numpy(ind_to)]
    aff = torch.exp(-(src - dst).abs().mean(dim=1))
    lab = grid.flatten(1).long()
    lf, lt = lab[:, np.tile(ind_from, 34)], lab[:, ind_to]
    valid = (lf != 255) & (lt != 255)
    bg = (lf == 0) & (lt == 0)
    fg = (lf == lt) & (lf != 0) & valid
    neg = (lf != lt) & valid
    eps = 1e-5
    terms = [-torch.log(aff[bg] + eps).mean(), -torch.log(aff[fg] + eps).mean(),
             -torch.log(1 + eps - aff[neg]).mean()]
    by_hand = terms[0] / 4 + terms[1] / 4 + terms[2] / 2
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-4)
    assert parts["bg_count"] == bg.sum() and parts["fg_count"] == fg.sum() and parts["neg_count"] == neg.sum()


@pytest.mark.parametrize("path", golden_cases("cam_crf_*.npz"))
def test_confident_labels_take_objects_from_low_alpha_and_background_from_high_alpha(path):
    """make-aff-labels' per-image functions with the paper's alphas give the original's rule
    applied to the original's two CRF outputs: objects where the low-alpha (4) CRF keeps them,
    background where the high-alpha (32) CRF keeps it."""
    d = np.load(path)
    settings = AffLabelsConfig(low_alpha=float(d["low_alpha"]), high_alpha=float(d["high_alpha"]))
    assert settings.low_alpha < settings.high_alpha
    image = WorkImage(d["image"], 0)
    low, high = crf_scores(image, d["cam_maps"], settings)
    got = confident_label_map(image, d["cam_keys"], low, high)
    keys = d["cam_keys"]
    expected = confident_labels(d["crf_la_maps"], d["crf_ha_maps"], keys=keys)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert (got == expected).mean() >= 0.999
    # where the case can tell the two rules apart (not, e.g., for an all-zero CAM), the stage
    # follows the right one and not the alphas the other way round
    swapped = confident_labels(d["crf_ha_maps"], d["crf_la_maps"], keys=keys)
    if (swapped != expected).mean() > 0.01:
        assert (got == swapped).mean() < 0.999
