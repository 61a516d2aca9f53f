"""Command line: parsing into configs, overrides, the demo recipe."""


import pytest
import yaml

from affinitynet import cli, pipeline
from affinitynet import config as C


# every command of the CLI (a new one is added here, with its README section)
COMMANDS = ("synth", "prepare-voc", "prepare-coco", "evaluate", "convert-weights", "train-cam", "make-cam",
            "make-aff-labels", "train-aff", "random-walk", "train-seg", "segment", "run", "tune", "demo", "report",
            "predict", "export", "import-cams", "export-labels")


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)
    for cmd in COMMANDS:
        assert f"    {cmd} " in out or f"    {cmd}\n" in out, cmd
        with pytest.raises(SystemExit) as exc:
            cli.main([cmd, "--help"])
        assert exc.value.code == 0 and f"usage: affinitynet {cmd}" in capsys.readouterr().out


def test_run_options_become_config(tmp_path):
    args = cli.build_parser().parse_args(
        ["run", "--workdir", str(tmp_path), "--dataset", "/data/voc", "--set", "backbone=vgg16",
         "--set", "random_walk.logt=6"])
    cfg = cli._run_config(args)
    assert cfg.workdir == str(tmp_path) and cfg.dataset.root == "/data/voc"
    assert cfg.train_cam.backbone == "vgg16" and cfg.random_walk.logt == 6
    assert cfg.random_walk.beta == 8.0  # untouched paper default


def test_bad_override_exits_2_before_any_work(tmp_path, capsys):
    work = tmp_path / "w"
    assert cli.main(["run", "--workdir", str(work), "--set", "random_walk.beta=-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("affinitynet: error:") and "random_walk.beta" in err and "\n" not in err
    assert not work.exists()


def test_demo_config_is_the_papers_but_for_the_recipe_file(tmp_path):
    """The demo's config is the paper's defaults with exactly the keys configs/demo.yaml sets
    (and its work folder and data) changed."""
    cfg = pipeline.demo_config(tmp_path)
    assert cfg.train_cam.backbone == "tiny" and cfg.dataset.root == str(tmp_path / "data")
    recipe = yaml.safe_load((C.RECIPES / "demo.yaml").read_text())
    listed = {f"{section}.{key}" for section, values in recipe.items() for key in values}

    def flat(d, prefix=""):
        for k, v in d.items():
            yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]

    differ = {k for (k, v), (_, p) in zip(flat(C.to_dict(cfg)), flat(C.to_dict(C.RunConfig()))) if v != p}
    assert differ - {"workdir", "dataset.root"} <= listed
    assert (cfg.aff_labels.low_alpha, cfg.aff_labels.high_alpha) == (4.0, 32.0)  # not listed: the paper's
