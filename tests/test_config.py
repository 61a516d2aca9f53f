"""Config: paper defaults, YAML and --set overrides, validation naming the key."""

from pathlib import Path

import pytest

from affinitynet import config as C
from affinitynet.errors import ConfigError


# Every setting the paper (Ahn & Kwak, CVPR 2018) or the original release fixes:
# (section, key, value, where it comes from).
PAPER_DEFAULTS = [
    ("dataset", "train_split", "train_aug", "classifier and AffinityNet trained on VOC train_aug"),
    ("dataset", "eval_split", "train", "pseudo labels evaluated on VOC train (Table 1)"),
    ("train_cam", "backbone", "resnet38", "Sec. 4.1, the best of the two networks"),
    ("train_cam", "batch_size", 16, "train_cls.py"),
    ("train_cam", "epochs", 15, "train_cls.py"),
    ("train_cam", "lr", 0.1, "train_cls.py"),
    ("train_cam", "weight_decay", 5e-4, "train_cls.py"),
    ("train_cam", "momentum", 5e-4, "train_cls.py passes the weight decay (5e-4) as SGD's momentum"),
    ("train_cam", "crop", 448, "train_cls.py"),
    ("train_cam", "resize_long", (256, 512), "train_cls.py"),
    ("train_cam", "color_jitter", (0.3, 0.3, 0.3, 0.1), "train_cls.py"),
    ("make_cam", "scales", (1.0, 0.5, 1.5, 2.0), "infer_cls.py, in its order"),
    ("make_cam", "flip", True, "infer_cls.py"),
    ("make_cam", "bg_score", 0.2, "infer_cls.py CAM prediction"),
    ("aff_labels", "low_alpha", 4.0, "Sec. 3.2 / infer_cls.py"),
    ("aff_labels", "high_alpha", 32.0, "Sec. 3.2 / infer_cls.py"),
    ("aff_labels", "crf_iterations", 10, "imutils.crf_inference"),
    ("train_aff", "batch_size", 8, "train_aff.py"),
    ("train_aff", "epochs", 8, "train_aff.py"),
    ("train_aff", "lr", 0.1, "train_aff.py"),
    ("train_aff", "weight_decay", 5e-4, "train_aff.py"),
    ("train_aff", "momentum", 5e-4, "train_aff.py passes the weight decay (5e-4) as SGD's momentum"),
    ("train_aff", "crop", 448, "train_aff.py"),
    ("train_aff", "resize_long", None, "train_aff.py: crop and flip only, no rescale"),
    ("train_aff", "flip", True, "train_aff.py: RandomHorizontalFlip"),
    ("train_aff", "amp", False, "train_aff.py trains in fp32"),
    ("train_cam", "flip", True, "train_cls.py: RandomHorizontalFlip"),
    ("train_cam", "amp", False, "train_cls.py trains in fp32"),
    ("dataset", "exif_transpose", False, "voc12/data.py: PIL.Image.open(...).convert('RGB'), no EXIF rotation"),
    ("train_aff", "color_jitter", (0.3, 0.3, 0.3, 0.1), "train_aff.py"),
    ("train_aff", "radius", 5, "Sec. 3.3, gamma = 5"),
    ("random_walk", "alpha", 16.0, "Sec. 3.4 / infer_aff.py"),
    ("random_walk", "beta", 8.0, "Sec. 3.4 / infer_aff.py"),
    ("random_walk", "logt", 8, "Sec. 3.4 / infer_aff.py: t = 2^8 = 256"),
    ("random_walk", "radius", 5, "infer_aff.py: the AffinityNet's pairs, radius 5 as in training"),
    # IRN (run_sample.py and the steps it calls), used with method: irn
    ("ir_labels", "fg_threshold", 0.30, "IRN run_sample.py conf_fg_thres"),
    ("ir_labels", "bg_threshold", 0.05, "IRN run_sample.py conf_bg_thres"),
    ("ir_labels", "gt_prob", 0.7, "IRN imutils.crf_inference_label"),
    ("train_irn", "radius", 10, "IRN train_irn.py: PathIndex(radius=10)"),
    ("train_irn", "crop", 512, "IRN run_sample.py irn_crop_size"),
    ("train_irn", "rescale", (0.5, 1.5), "IRN train_irn.py: rescale=(0.5, 1.5)"),
    ("train_irn", "batch_size", 32, "IRN run_sample.py irn_batch_size"),
    ("train_irn", "epochs", 3, "IRN run_sample.py irn_num_epoches"),
    ("train_irn", "lr", 0.1, "IRN run_sample.py irn_learning_rate"),
    ("train_irn", "weight_decay", 1e-4, "IRN run_sample.py irn_weight_decay"),
    ("train_irn", "momentum", 1e-4, "IRN's PolyOptimizer passes the weight decay as SGD's momentum"),
    ("train_irn", "color_jitter", (0.0, 0.0, 0.0, 0.0), "IRN VOC12AffinityDataset: no colour jitter"),
    ("irn_labels", "beta", 10.0, "IRN run_sample.py beta"),
    ("irn_labels", "exp_times", 8, "IRN run_sample.py exp_times"),
    ("irn_labels", "radius", 5, "IRN make_sem_seg_labels.py: the walk's radius 5"),
    ("irn_labels", "sem_seg_bg_thres", 0.25, "IRN run_sample.py sem_seg_bg_thres"),
    ("irn_labels", "ins_seg_bg_thres", 0.25, "IRN run_sample.py ins_seg_bg_thres"),
    ("irn_labels", "crop", 512, "IRN make_sem_seg_labels.py: EdgeDisplacement(crop_size=512)"),
    ("", "method", "psa", "this paper's method unless irn is chosen"),
]


@pytest.mark.parametrize("section, key, value, source", PAPER_DEFAULTS,
                         ids=[f"{s}.{k}" for s, k, _, _ in PAPER_DEFAULTS])
def test_paper_defaults(section, key, value, source):
    cfg = C.RunConfig()
    assert getattr(getattr(cfg, section) if section else cfg, key) == value, source


def test_yaml_and_set_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("workdir: /tmp/x\ntrain_cam:\n  backbone: vgg16\n  resize_long: [100, 200]\n")
    cfg = C.load_config(C.RunConfig, f, ["random_walk.beta=4", "dataset.infer_splits=[a,b]"])
    assert cfg.workdir == "/tmp/x" and cfg.train_cam.backbone == "vgg16"
    assert cfg.train_cam.resize_long == (100, 200)
    assert cfg.random_walk.beta == 4.0 and isinstance(cfg.random_walk.beta, float)
    assert cfg.dataset.infer_splits == ("a", "b")
    # round trip through the YAML written into a work folder
    g = tmp_path / "d.yaml"
    g.write_text(C.dump_yaml(cfg))
    assert C.load_config(C.RunConfig, g) == cfg


@pytest.mark.parametrize("sets, key", [
    (["random_walk.bogus=1"], "random_walk.bogus"),
    (["nope=1"], "nope"),
    (["random_walk.beta=-1"], "random_walk.beta"),
    (["random_walk.logt=21"], "random_walk.logt"),
    (["train_aff.radius=0"], "train_aff.radius"),
    (["train_cam.epochs=abc"], "train_cam.epochs"),
    (["train_cam.amp=maybe"], "train_cam.amp"),
    (["train_cam.resize_long=[1,2,3]"], "train_cam.resize_long"),
    (["random_walk.method=magic"], "method"),
    (["method=seam"], "method"),
    (["method=irn", "train_cam.backbone=vgg16"], "method"),  # IRN's network has no VGG-16 variant
    (["train_irn.crop=60"], "train_irn.crop"),  # under 4 * (2 * 10 - 1) for radius 10
    (["train_irn.crop=90"], "train_irn.crop"),  # not a multiple of 4
    (["train_irn.rescale=[1.5,0.5]"], "train_irn.rescale"),
])
def test_bad_values_name_the_key(sets, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        C.load_config(C.RunConfig, None, sets)


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        C.load_config(C.RunConfig, f)
    with pytest.raises(ConfigError, match="does not exist"):
        C.load_config(C.RunConfig, tmp_path / "missing.yaml")


def test_resnet50_gets_the_irn_recipe_unless_overridden():
    cfg = C.load_config(C.RunConfig, None, ["train_cam.backbone=resnet50"])
    assert (cfg.train_cam.epochs, cfg.train_cam.weight_decay, cfg.train_cam.crop) == (5, 1e-4, 512)
    cfg = C.load_config(C.RunConfig, None, ["train_cam.backbone=resnet50", "train_cam.epochs=7"])
    assert cfg.train_cam.epochs == 7 and cfg.train_cam.crop == 512
    assert C.load_config(C.RunConfig, None, ["train_cam.backbone=vgg16"]).train_cam.epochs == 15


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("voc_*.yaml")), ids=lambda p: p.name)
def test_example_configs_load(path):
    """The VOC configs in configs/ are valid and pick the backbone their name says."""
    cfg = C.load_config(C.RunConfig, path)
    backbone = path.stem.split("_")[-1]
    assert cfg.train_cam.backbone == backbone
    assert cfg.dataset.root and cfg.train_cam.weights
    assert cfg.train_aff.weights == cfg.train_seg.weights == cfg.train_cam.weights


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("coco_*.yaml")), ids=lambda p: p.name)
def test_coco_configs_load(path):
    """The COCO configs are valid, pick their backbone, train on train2014 and evaluate on
    val2014 (the splits prepare-coco writes)."""
    cfg = C.load_config(C.RunConfig, path)
    assert cfg.train_cam.backbone == path.stem.split("_")[-1]
    assert cfg.dataset.root and cfg.train_cam.weights
    assert cfg.train_aff.weights == cfg.train_seg.weights == cfg.train_cam.weights
    assert (cfg.dataset.train_split, cfg.dataset.infer_splits, cfg.dataset.eval_split) == ("train", ("train",), "val")
    if cfg.train_cam.backbone == "resnet50":  # IRN's recipe, as the COCO follow-ups use it
        tc = cfg.train_cam
        assert (tc.epochs, tc.batch_size, tc.lr, tc.weight_decay, tc.crop) == (5, 16, 0.1, 1e-4, 512)


def test_coco_configs_exist():
    assert sorted(p.name for p in CONFIGS.glob("coco_*.yaml")) == ["coco_resnet38.yaml", "coco_resnet50.yaml"]


def test_demo_recipe_is_a_file_run_accepts():
    """configs/demo.yaml is the CPU recipe; `--config demo` finds the shipped copy anywhere."""
    assert (CONFIGS / "demo.yaml").resolve() == (C.RECIPES / "demo.yaml").resolve()
    by_path = C.load_config(C.RunConfig, CONFIGS / "demo.yaml")
    by_name = C.load_config(C.RunConfig, "demo")
    assert by_path == by_name
    assert by_name.train_cam.backbone == "tiny" and by_name.train_cam.crop == 224
    assert (by_name.dataset.train_split, by_name.dataset.eval_split) == ("train", "val")
    assert by_name.dataset.long_side == 256 and by_name.random_walk.beta == C.RandomWalkConfig().beta
    # the backbone recipes apply under it, as under any config: what the file sets wins
    r50 = C.load_config(C.RunConfig, "demo", ["train_cam.backbone=resnet50"])
    assert r50.train_cam.weight_decay == 1e-4  # IRN's
    assert (r50.train_cam.epochs, r50.train_cam.crop, r50.train_cam.momentum) == (12, 224, 0.9)  # the demo's
    with pytest.raises(ConfigError, match="does not exist"):
        C.load_config(C.RunConfig, "no_such_recipe")


def test_ranges_are_declared_per_field():
    """A range belongs to a field of one section; a subclass that changes a default keeps it."""
    with pytest.raises(ConfigError, match=r"'train_seg\.epochs' = -1 is out of range"):
        C.load_config(C.RunConfig, None, ["train_seg.epochs=-1"])
    with pytest.raises(ConfigError, match=r"'make_cam\.scales' = \(1\.0, -0\.5\) is out of range"):
        C.load_config(C.RunConfig, None, ["make_cam.scales=[1.0,-0.5]"])
    with pytest.raises(ConfigError, match=r"'train_cam\.momentum' = 1\.5 is out of range"):
        C.load_config(C.RunConfig, None, ["train_cam.momentum=1.5"])
    # SynthConfig's ``train`` (image count) and a RunConfig section named ``train_*`` do not mix
    assert C.load_config(C.SynthConfig, None, ["train=0"]).train == 0


def test_choices_agree_with_what_they_name():
    """The settings that name a backbone, a segmentation model, a synthetic family or an export
    format offer exactly what exists (config keeps the names to validate without torch)."""
    from affinitynet.data.synthetic import families
    from affinitynet.models import BACKBONES, SEGMENTATION_MODELS
    from affinitynet.stages import export

    assert set(C.BACKBONE_NAMES) == set(BACKBONES)
    assert set(C.IRN_BACKBONES) == {name for name, spec in BACKBONES.items() if spec.irn}
    assert set(C.SEGMENTATION_MODEL_NAMES) == set(SEGMENTATION_MODELS)
    assert set(C.SYNTHETIC_FAMILIES) == set(families())
    assert set(C.EXPORT_FORMATS) == set(export.EXPORTERS)


def test_irn_recipe_is_irns_run_sample():
    """configs/irn_voc_resnet50.yaml: IRN's pipeline with IRN's defaults (run_sample.py)."""
    cfg = C.load_config(C.RunConfig, "irn_voc_resnet50")
    assert cfg.method == "irn" and cfg.make_cam.fusion == "irn" and cfg.train_cam.backbone == "resnet50"
    assert cfg.make_cam.scales == (1.0, 0.5, 1.5, 2.0) and cfg.make_cam.flip and cfg.dataset.long_side == 0
    assert cfg.make_cam.bg_score == 0.15  # IRN's cam_eval_thres
    assert cfg.train_irn.weights == cfg.train_cam.weights and cfg.backbone_of(cfg.train_irn) == "resnet50"
    assert (cfg.ir_labels.fg_threshold, cfg.ir_labels.bg_threshold) == (0.30, 0.05)
    assert (cfg.irn_labels.beta, cfg.irn_labels.exp_times, cfg.irn_labels.sem_seg_bg_thres) == (10.0, 8, 0.25)
    assert (cfg.train_irn.crop, cfg.train_irn.epochs, cfg.train_irn.batch_size) == (512, 3, 32)
