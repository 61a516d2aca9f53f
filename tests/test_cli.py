"""Command line: parsing into configs, overrides, and that the library never imports the CLI."""

import subprocess
import sys

import pytest

from affinitynet import cli, pipeline


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("synth", "prepare-voc", "evaluate", "convert-weights", "train-cam", "make-cam",
                "make-aff-labels", "train-aff", "random-walk", "run", "demo"):
        assert cmd in out


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


def test_demo_config_is_the_papers_but_for_the_listed_overrides(tmp_path):
    cfg = pipeline.demo_config(tmp_path)
    assert cfg.train_cam.backbone == "tiny"
    assert (cfg.random_walk.alpha, cfg.random_walk.beta, cfg.random_walk.logt) == (16.0, 8.0, 8)
    assert (cfg.aff_labels.low_alpha, cfg.aff_labels.high_alpha) == (4.0, 32.0)
    assert cfg.dataset.root == str(tmp_path / "data")


def test_importing_the_library_does_not_import_the_cli():
    code = ("import sys, affinitynet, affinitynet.pipeline, affinitynet.stages.train_cam; "
            "print('affinitynet.cli' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
