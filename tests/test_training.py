"""The training loop's data path (``training.fit`` through the real stages and directly).

* The augmentation of an image is a function of (seed, epoch, index): train-cam with two
  persistent loader workers ends with bitwise the weights of the run without workers.
* ``EpochSampler``: the global batch of a step holds the same images, with the same
  augmentation seeds, for one rank and for two.
* ``channels_last`` (NHWC network and input, the CUDA default) trains the same network as NCHW.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _helpers import single_torch_thread, tiny_sets, write_config

from affinitynet import artifacts, training
from affinitynet.artifacts import TrainingFolder, WorkDir
from affinitynet.config import TrainingConfig
from affinitynet.cli import main
from affinitynet.data.synthetic import generate


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("training") / "data"
    generate(root, 8, 2, seed=5)
    return root


@pytest.mark.parametrize("workers", [2])
def test_loader_workers_do_not_change_training(data, tmp_path, workers):
    """Two epochs of train-cam with 0 and with persistent workers: identical weights and losses."""
    finals, losses = [], []
    for n in (0, workers):
        work = tmp_path / f"w{n}"
        cfg_file = tmp_path / f"w{n}.yaml"
        write_config(cfg_file, work, data, tiny_sets(cam_epochs=2, crf_iterations=1, logt=1)
                     + [f"train_cam.num_workers={n}", "train_cam.color_jitter=[0.3,0.3,0.3,0.1]"])
        with single_torch_thread():
            assert main(["train-cam", "--config", str(cfg_file)]) == 0
        finals.append(artifacts.load_checkpoint(WorkDir(work).classifier.final))
        losses.append([r["loss"] for r in artifacts.read_jsonl(WorkDir(work).classifier.log)
                       if r["kind"] == "step"])
    assert len(losses[0]) == 8 and losses[0] == losses[1]
    differ = [k for k in finals[0] if not torch.equal(finals[0][k], finals[1][k])]
    assert not differ, f"weights differ between 0 and {workers} loader workers: {differ}"


def _global_batches(n: int, world: int, per_rank: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The (index, seed) items of each global step when ``world`` ranks take ``per_rank`` each."""
    ranks = []
    for rank in range(world):
        sampler = training.EpochSampler(range(n), num_replicas=world, rank=rank, shuffle=True,
                                        seed=7, drop_last=True)
        sampler.set_epoch(epoch)
        items = list(sampler)
        ranks.append([items[i:i + per_rank] for i in range(0, len(items) - per_rank + 1, per_rank)])
    return [sorted(sum((r[step] for r in ranks), [])) for step in range(len(ranks[0]))]


def test_epoch_sampler_global_batches_independent_of_ranks():
    one, two = _global_batches(24, 1, 8, epoch=3), _global_batches(24, 2, 4, epoch=3)
    assert len(one) == 3 and one == two
    assert sorted(i for b in one for i, _ in b) == list(range(24))  # each image once
    other_epoch = _global_batches(24, 1, 8, epoch=4)
    assert other_epoch != one  # a new order and new augmentation every epoch
    seeds = {s for b in one + other_epoch for _, s in b}
    assert len(seeds) == 48


class _Images(torch.utils.data.Dataset):
    """Fixed random images and labels; takes fit's (index, seed) items."""

    def __init__(self, n: int) -> None:
        gen = torch.Generator().manual_seed(1)
        self.images = torch.randn(n, 3, 48, 48, generator=gen)
        self.labels = (torch.rand(n, 3, generator=gen) > 0.5).float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item):
        return self.images[item[0]], self.labels[item[0]]


# two epochs of batch 4 with a real momentum, no workers, no AMP
SETTINGS = TrainingConfig(batch_size=4, epochs=2, lr=0.05, weight_decay=5e-4, momentum=0.9, num_workers=0,
                          amp=False, seed=3)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_trains_the_same_network(tmp_path, device):
    from affinitynet.config import RunConfig
    from affinitynet.models import build_classifier

    device = torch.device(device)
    finals = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        net = build_classifier("tiny", 3)

        def loss_fn(model, batch, channels_last=channels_last):
            x = batch[0]
            assert x.device.type == device.type and batch[1].device.type == device.type
            assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
            return torch.nn.functional.multilabel_soft_margin_loss(model(x), batch[1]), {}

        with single_torch_thread():
            training.fit(net, loss_fn, _Images(8), None, SETTINGS, TrainingFolder(tmp_path / str(channels_last)),
                         device, resume=False, config=RunConfig(), desc="test", channels_last=channels_last)
        final = artifacts.load_checkpoint(TrainingFolder(tmp_path / str(channels_last)).final)
        assert all(v.is_contiguous() for v in final.values())  # final.pth is plain NCHW
        finals.append(final)
    torch.manual_seed(0)  # the initial weights both runs started from
    initial = build_classifier("tiny", 3).state_dict()
    # cuDNN convolutions run in TF32 by default, and the two layouts may pick different kernels
    tolerance = 1e-4 if device.type == "cpu" else 5e-3
    for k, want in finals[0].items():
        got = finals[1][k]
        if want.is_floating_point():
            scale = float(want.abs().max()) or 1.0
            assert float((got - want).abs().max()) / scale < tolerance, k
    moved = [k for k in finals[0] if finals[0][k].is_floating_point()
             and not torch.allclose(finals[0][k], initial[k])]
    assert moved, "training changed no weight"
