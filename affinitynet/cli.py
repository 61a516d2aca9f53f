"""Command line: ``affinitynet <command> ...``. Thin: parse flags into a config, call a stage.

``main(argv)`` returns the exit status, so tests call it in-process. Errors the user can fix
(``AffinityNetError``) print one line ``affinitynet: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Any

from affinitynet import config as C
from affinitynet import pipeline
from affinitynet.data.synthetic import families
from affinitynet.errors import AffinityNetError
from affinitynet.stages import convert_weights, evaluate, export, predict, prepare_coco, prepare_voc, synth, tune


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=[],
                   help="YAML file overriding the paper's defaults, or the name of a recipe in configs/ "
                        "(e.g. demo, voc_resnet38); repeatable, later files win (e.g. a recipe, then tuned.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train_cam.backbone=vgg16 (repeatable)")
    p.add_argument("--workdir", help="work folder (config key workdir)")
    p.add_argument("--dataset", help="dataset root in VOC layout (config key dataset.root)")
    p.add_argument("--device", help="auto, cpu, cuda (config key device)")


def _run_config(args: argparse.Namespace) -> C.RunConfig:
    flags: dict = {}
    if args.workdir:
        flags["workdir"] = args.workdir
    if args.dataset:
        flags["dataset"] = {"root": args.dataset}
    if args.device:
        flags["device"] = args.device
    return C.load_config(C.RunConfig, args.config, [_alias(s) for s in args.set], values=flags)


def _alias(item: str) -> str:
    """``backbone=x`` is short for setting every network's backbone (train_cam.backbone)."""
    key, _, value = item.partition("=")
    if key.strip() == "backbone":
        return f"train_cam.backbone={value}"
    return item


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="affinitynet",
        description="AffinityNet (Ahn & Kwak, CVPR 2018): segmentation labels from image-level labels.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write the built-in synthetic dataset (VOC layout)")
    p.add_argument("out")
    p.add_argument("--train", type=int, default=C.SynthConfig.train)
    p.add_argument("--val", type=int, default=C.SynthConfig.val)
    p.add_argument("--seed", type=int, default=C.SynthConfig.seed)
    p.add_argument("--family", default=C.SynthConfig.family, choices=tuple(families()),
                   help="shapes: 200-320 px, plain background; clutter: 96-640 px, cluttered background")
    p.add_argument("--scale", type=float, default=C.SynthConfig.scale, help="resize every image by this factor")

    p = sub.add_parser("prepare-voc", help="split lists and image labels for PASCAL VOC 2012 + SBD")
    p.add_argument("--voc-root", required=True)
    p.add_argument("--sbd-root", default="")
    p.add_argument("--out", default="")
    p.add_argument("--convert-sbd", action="store_true", help="write SBD .mat masks as PNGs")

    p = sub.add_parser("prepare-coco", help="MS-COCO 2014 as a VOC-layout dataset: lists, labels, image links, masks")
    p.add_argument("--coco-root", required=True,
                   help="folder with train2014/, val2014/ and annotations/instances_{train,val}2014.json")
    p.add_argument("--out", default="", help="dataset folder to write (default: the COCO root)")
    p.add_argument("--processes", type=int, default=C.PrepareCOCOConfig.processes,
                   help="mask-writing processes (0 = all cores)")

    p = sub.add_parser("evaluate", help="mIoU of palette-PNG predictions against ground truth")
    p.add_argument("--pred", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--out", default="")

    p = sub.add_parser("convert-weights", help="MXNet .params / Caffe .caffemodel -> .pth")
    p.add_argument("input")
    p.add_argument("output")

    for stage in pipeline.STAGES:
        p = sub.add_parser(stage.command, help=stage.help)
        _add_run_options(p)
        if stage.trains:
            p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")

    p = sub.add_parser("run", help="the whole pipeline from one YAML config")
    _add_run_options(p)

    p = sub.add_parser("tune", help="search bg score, CRF alphas and walk settings on images with ground truth")
    _add_run_options(p)

    p = sub.add_parser("predict", help="segment any images with a trained segmentation network")
    p.add_argument("inputs", nargs="+", metavar="IMAGES", help="image files, folders, .txt lists of image paths")
    p.add_argument("--weights", required=True, help="a work folder or train-seg's final.pth")
    p.add_argument("--out", required=True, help="folder for <name>.png (palette PNGs)")
    p.add_argument("--overlay", action="store_true", help="also <out>/overlay/<name>.jpg: labels over the image")
    p.add_argument("--scales", default="1.0", help="comma-separated scales of the working size (default 1.0)")
    p.add_argument("--no-flip", dest="flip", action="store_false", help="no horizontal-flip pass")
    p.add_argument("--crf", action="store_true", help="dense-CRF post-processing")
    p.add_argument("--long-side", type=int, default=-1, help="working size (default: the network's)")
    p.add_argument("--batch-size", type=int, default=1, help="images of one size per network pass")
    p.add_argument("--workers", type=int, default=2, help="image decoding processes")
    p.add_argument("--device", default="auto")
    p.add_argument("--exif-transpose", action="store_true",
                   help="turn images upright by their EXIF orientation (default: the stored pixel grid)")

    p = sub.add_parser("export", help="a trained segmentation network as ONNX or TorchScript")
    p.add_argument("--weights", required=True, help="a work folder or train-seg's final.pth")
    p.add_argument("--out", required=True, help="the file to write (e.g. seg.onnx)")
    p.add_argument("--format", default=C.ExportConfig.format, choices=export.FORMATS)

    p = sub.add_parser("demo", help="synthetic data + whole pipeline with the CPU recipe (configs/demo.yaml)")
    p.add_argument("--workdir", default="work/demo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="auto")
    p.add_argument("--family", default=C.SynthConfig.family, choices=tuple(families()), help="synthetic family")

    p = sub.add_parser("report", help="HTML report of a work folder (scores, training curves, CAM sweep, gallery)")
    p.add_argument("workdir", help="the work folder of a run (finished or not)")
    p.add_argument("--images", type=_count, default=None,
                   help="gallery size (default 24: the best, the worst and random images by random-walk IoU)")
    return parser


def _count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _dispatch(args: argparse.Namespace) -> Any:
    cmd = args.command
    if cmd == "synth":
        return synth.run(C.SynthConfig(out=args.out, train=args.train, val=args.val, seed=args.seed,
                                       family=args.family, scale=args.scale))
    if cmd == "prepare-voc":
        return prepare_voc.run(C.PrepareVOCConfig(
            voc_root=args.voc_root, sbd_root=args.sbd_root, out=args.out, convert_sbd=args.convert_sbd))
    if cmd == "prepare-coco":
        return prepare_coco.run(C.PrepareCOCOConfig(coco_root=args.coco_root, out=args.out, processes=args.processes))
    if cmd == "evaluate":
        return evaluate.run(C.EvaluateConfig(pred=args.pred, dataset=args.dataset, split=args.split, out=args.out))
    if cmd == "convert-weights":
        return convert_weights.run(C.ConvertWeightsConfig(input=args.input, output=args.output))
    if cmd == "run":
        return pipeline.run(_run_config(args))
    if cmd == "tune":
        return tune.run(_run_config(args))
    if cmd == "predict":
        settings = {"weights": args.weights, "inputs": args.inputs, "out": args.out, "overlay": args.overlay,
                    "scales": args.scales, "flip": args.flip, "crf": args.crf, "long_side": args.long_side,
                    "batch_size": args.batch_size, "num_workers": args.workers, "device": args.device,
                    "exif_transpose": args.exif_transpose}
        return predict.run(C.load_config(C.PredictConfig, values=settings))
    if cmd == "export":
        return export.run(C.ExportConfig(weights=args.weights, out=args.out, format=args.format))
    if cmd == "report":
        from affinitynet import report  # matplotlib: loaded for the commands that draw, not for every command

        path = report.write_report(args.workdir, **({} if args.images is None else {"images": args.images}))
        print(f"report: {path}")
        return path
    if cmd == "demo":
        return pipeline.demo(workdir=args.workdir, sets=[_alias(s) for s in args.set], device=args.device,
                             data={"family": args.family})
    stage = next(s for s in pipeline.STAGES if s.command == cmd)
    return stage.run(_run_config(args), resume=getattr(args, "resume", False))


_USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def one_line(exc: BaseException) -> str:
    """The error's message on one line. An error raised in a DataLoader worker arrives wrapped
    in "Caught X in DataLoader worker process N. Original Traceback ..."; keep the original
    message, i.e. the traceback's last line without the exception's name."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if text.startswith("Caught ") and "Original Traceback" in text and lines:
        last = lines[-1]
        name = type(exc).__name__
        for prefix in (f"{type(exc).__module__}.{name}: ", f"{name}: "):
            if last.startswith(prefix):
                last = last[len(prefix):]
                break
        return last
    return " ".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _dispatch(args)
    except AffinityNetError as exc:
        print(f"affinitynet: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        # a full disk or an unwritable work folder outside the atomic writers (e.g. a log append)
        if exc.errno not in _USER_OS_ERRORS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"affinitynet: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("affinitynet: interrupted; finished outputs are kept, rerun to resume", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        from affinitynet import distributed

        if not distributed.peer_failure(exc):
            raise
        # one line instead of a transport traceback: the rank that failed printed the cause
        print(f"affinitynet: error: rank {distributed.current().rank}: another rank stopped, so this "
              "one cannot go on (the other rank's error is above)", file=sys.stderr)
        return 1
    finally:
        from affinitynet import distributed

        distributed.cleanup()  # under torchrun: leave the process group cleanly
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
