"""Command line: ``affinitynet <command> ...``. Thin: parse flags into a config, call a stage.

``main(argv)`` returns the exit status, so tests call it in-process. Errors the user can fix
(``AffinityNetError``) print one line ``affinitynet: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable
from typing import Any

from affinitynet import config as C
from affinitynet import pipeline
from affinitynet.errors import AffinityNetError
from affinitynet.stages import (convert_weights, evaluate, export, export_labels, predict, prepare_coco, prepare_voc,
                                synth, tune)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=[],
                   help="YAML file overriding the paper's defaults, or the name of a recipe in configs/ "
                        "(e.g. demo, voc_resnet38); repeatable, later files win (e.g. a recipe, then tuned.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train_cam.backbone=vgg16 (repeatable)")
    p.add_argument("--workdir", help="work folder (config key workdir)")
    p.add_argument("--dataset", help="dataset root in VOC layout (config key dataset.root)")
    p.add_argument("--device", help="auto, cpu, cuda (config key device)")
    p.add_argument("--redo", action="append", default=[], metavar="STAGE",
                   help="redo this stage (e.g. random_walk) even if its outputs were made with these settings; the "
                        "stages after it follow (config key redo; repeatable)")
    p.add_argument("--refuse-changes", action="store_true",
                   help="stop with an error, instead of redoing them, where outputs were made with other settings "
                        "(config key changed: refuse)")


def _run_config(args: argparse.Namespace) -> C.RunConfig:
    flags: dict = {}
    if args.workdir:
        flags["workdir"] = args.workdir
    if args.dataset:
        flags["dataset"] = {"root": args.dataset}
    if args.device:
        flags["device"] = args.device
    if args.redo:
        flags["redo"] = [r.replace("-", "_") for r in args.redo]
    if args.refuse_changes:
        flags["changed"] = "refuse"
    return C.load_config(C.RunConfig, args.config, [_alias(s) for s in args.set], values=flags)


def _alias(item: str) -> str:
    """``backbone=x`` is short for setting every network's backbone (train_cam.backbone)."""
    key, _, value = item.partition("=")
    if key.strip() == "backbone":
        return f"train_cam.backbone={value}"
    return item


def _data_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the built-in synthetic dataset (VOC layout)")
    p.add_argument("out")
    p.add_argument("--train", type=int, default=C.SynthConfig.train)
    p.add_argument("--val", type=int, default=C.SynthConfig.val)
    p.add_argument("--seed", type=int, default=C.SynthConfig.seed)
    p.add_argument("--family", default=C.SynthConfig.family, choices=C.SYNTHETIC_FAMILIES,
                   help="shapes: 200-320 px, plain background; clutter: 96-640 px, cluttered background")
    p.add_argument("--scale", type=float, default=C.SynthConfig.scale, help="resize every image by this factor")

    p = sub.add_parser("prepare-voc", help="split lists and image labels for PASCAL VOC 2012 + SBD")
    p.add_argument("--voc-root", required=True)
    p.add_argument("--sbd-root", default=C.PrepareVOCConfig.sbd_root)
    p.add_argument("--out", default=C.PrepareVOCConfig.out)
    p.add_argument("--convert-sbd", action="store_true", help="write SBD .mat masks as PNGs")

    p = sub.add_parser("prepare-coco", help="MS-COCO 2014 as a VOC-layout dataset: lists, labels, image links, masks")
    p.add_argument("--coco-root", required=True,
                   help="folder with train2014/, val2014/ and annotations/instances_{train,val}2014.json")
    p.add_argument("--out", default=C.PrepareCOCOConfig.out, help="dataset folder to write (default: the COCO root)")
    p.add_argument("--processes", type=int, default=C.PrepareCOCOConfig.processes,
                   help="mask-writing processes (0 = all cores)")

    p = sub.add_parser("evaluate", help="mIoU of palette-PNG predictions (or mask AP of instance files) "
                                        "against ground truth")
    p.add_argument("--pred", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default=C.EvaluateConfig.split)
    p.add_argument("--out", default=C.EvaluateConfig.out)
    p.add_argument("--instances", action="store_true",
                   help="score <pred>/<image>.json instance files (COCO results, RLE) against SegmentationObject")
    p.add_argument("--iou", type=float, default=C.EvaluateConfig.iou, help="IoU of a match, with --instances")

    p = sub.add_parser("convert-weights", help="MXNet .params / Caffe .caffemodel -> .pth")
    p.add_argument("input")
    p.add_argument("output")


def _pipeline_commands(sub: argparse._SubParsersAction) -> None:
    for stage in pipeline.STAGES:
        _add_run_options(sub.add_parser(stage.info.cli, help=stage.info.help))
    for name, help_text in (("run", "the whole pipeline from one YAML config"),
                            ("tune", "search bg score, CRF alphas and walk settings on images with ground truth")):
        _add_run_options(sub.add_parser(name, help=help_text))
    p = sub.add_parser("import-cams", help="another method's CAMs (psa, irn or npz files) as this work folder's "
                                           "CAMs; `run` then continues from make-aff-labels")
    _add_run_options(p)
    p.add_argument("--from", dest="source", required=True, metavar="DIR", help="folder of <image>.npy / .npz files")
    p.add_argument("--format", required=True, choices=C.CAM_EXCHANGE_FORMATS,
                   help="psa: {class index: map} .npy (PSA, SEAM, MCTformer); irn: {keys, cam, high_res} .npy (IRN, "
                        "ReCAM, AMN, CLIMS); npz: keys + maps arrays, no pickle")
    p.add_argument("--trust-pickle", action="store_true",
                   help="read psa / irn files, which are Python pickles and can run code: only for files you trust")
    p = sub.add_parser("demo", help="synthetic data + whole pipeline with the CPU recipe (configs/demo.yaml)")
    p.add_argument("--workdir", default="work/demo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default=C.RunConfig.device)
    p.add_argument("--family", default=C.SynthConfig.family, choices=C.SYNTHETIC_FAMILIES, help="synthetic family")
    p = sub.add_parser("report", help="HTML report of a work folder (scores, training curves, CAM sweep, gallery)")
    p.add_argument("workdir", help="the work folder of a run (finished or not)")
    p.add_argument("--images", type=_count, default=None,
                   help="gallery size (default 24: the best, the worst and random images by random-walk IoU)")


def _use_commands(sub: argparse._SubParsersAction) -> None:
    segment = C.SegmentConfig
    p = sub.add_parser("predict", help="segment any images with a trained segmentation network")
    p.add_argument("inputs", nargs="+", metavar="IMAGES", help="image files, folders, .txt lists of image paths")
    p.add_argument("--weights", required=True, help="a work folder or train-seg's final.pth")
    p.add_argument("--out", required=True, help="folder for <name>.png (palette PNGs)")
    p.add_argument("--overlay", action="store_true", help="also <out>/overlay/<name>.jpg: labels over the image")
    p.add_argument("--scales", default=",".join(map(str, segment.scales)),
                   help="comma-separated scales of the working size")
    p.add_argument("--no-flip", dest="flip", action="store_false", help="no horizontal-flip pass")
    p.add_argument("--crf", action="store_true", help="dense-CRF post-processing")
    p.add_argument("--long-side", type=int, default=C.PredictConfig.long_side,
                   help="working size (default: the network's)")
    p.add_argument("--batch-size", type=int, default=C.PredictConfig.batch_size,
                   help="images of one size per network pass")
    p.add_argument("--workers", type=int, default=segment.num_workers, help="image decoding processes")
    p.add_argument("--device", default=C.PredictConfig.device)
    p.add_argument("--exif-transpose", action="store_true",
                   help="turn images upright by their EXIF orientation (default: the stored pixel grid)")
    p = sub.add_parser("export-labels", help="a work folder's label maps and CAMs where other toolkits read them")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="folder for labels/<image>.png, cams/<image>.npy|npz, classes.txt")
    p.add_argument("--labels", default=C.ExportLabelsConfig.labels, choices=(*C.LABEL_STAGES, "none"),
                   help="whose label maps (default: the random walk's pseudo labels)")
    p.add_argument("--png", default=C.ExportLabelsConfig.png, choices=("palette", "gray"),
                   help="gray: plain index PNGs, as PSA and IRN write them")
    p.add_argument("--cams", default="none", choices=(*C.CAM_EXCHANGE_FORMATS, "none"), help="also the CAMs, in this format")
    p = sub.add_parser("export", help="a trained segmentation network as ONNX or TorchScript")
    p.add_argument("--weights", required=True, help="a work folder or train-seg's final.pth")
    p.add_argument("--out", required=True, help="the file to write (e.g. seg.onnx)")
    p.add_argument("--format", default=C.ExportConfig.format, choices=C.EXPORT_FORMATS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="affinitynet",
        description="AffinityNet (Ahn & Kwak, CVPR 2018): segmentation labels from image-level labels.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _data_commands(sub)
    _pipeline_commands(sub)
    _use_commands(sub)
    return parser


def _count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


# command -> (its config class, the stage's run, the config values from the parsed flags)
_COMMANDS: dict[str, tuple[type, Callable[[Any], Any], Callable[[argparse.Namespace], dict[str, Any]]]] = {
    "synth": (C.SynthConfig, synth.run, lambda a: {"out": a.out, "train": a.train, "val": a.val, "seed": a.seed,
                                                   "family": a.family, "scale": a.scale}),
    "prepare-voc": (C.PrepareVOCConfig, prepare_voc.run, lambda a: {"voc_root": a.voc_root, "sbd_root": a.sbd_root,
                                                                    "out": a.out, "convert_sbd": a.convert_sbd}),
    "prepare-coco": (C.PrepareCOCOConfig, prepare_coco.run,
                     lambda a: {"coco_root": a.coco_root, "out": a.out, "processes": a.processes}),
    "evaluate": (C.EvaluateConfig, evaluate.run,
                 lambda a: {"pred": a.pred, "dataset": a.dataset, "split": a.split, "out": a.out,
                            "instances": a.instances, "iou": a.iou}),
    "convert-weights": (C.ConvertWeightsConfig, convert_weights.run, lambda a: {"input": a.input, "output": a.output}),
    "predict": (C.PredictConfig, predict.run, lambda a: {
        "weights": a.weights, "inputs": a.inputs, "out": a.out, "overlay": a.overlay, "long_side": a.long_side,
        "batch_size": a.batch_size, "device": a.device, "exif_transpose": a.exif_transpose,
        "segment": {"scales": a.scales, "flip": a.flip, "crf": a.crf, "num_workers": a.workers}}),
    "export": (C.ExportConfig, export.run, lambda a: {"weights": a.weights, "out": a.out, "format": a.format}),
    "export-labels": (C.ExportLabelsConfig, export_labels.run, lambda a: {
        "workdir": a.workdir, "out": a.out, "labels": "" if a.labels == "none" else a.labels, "png": a.png,
        "cams": "" if a.cams == "none" else a.cams}),
}


def _dispatch(args: argparse.Namespace) -> Any:
    cmd = args.command
    if cmd in _COMMANDS:
        cls, run, values = _COMMANDS[cmd]
        return run(C.load_config(cls, values=values(args)))
    if cmd == "run":
        return pipeline.run(_run_config(args))
    if cmd == "import-cams":
        spec = C.load_config(C.ImportCamsConfig, values={"source": args.source, "format": args.format,
                                                         "trust_pickle": args.trust_pickle})
        return pipeline.import_cams(_run_config(args), spec)
    if cmd == "tune":
        return tune.run(_run_config(args))
    if cmd == "report":
        from affinitynet import report  # matplotlib: loaded for the commands that draw, not for every command

        path = report.write_report(args.workdir, **({} if args.images is None else {"images": args.images}))
        print(f"report: {path}")
        return path
    if cmd == "demo":
        return pipeline.demo(workdir=args.workdir, sets=[_alias(s) for s in args.set], device=args.device,
                             data={"family": args.family})
    stage = next(s for s in pipeline.STAGES if s.info.cli == cmd)
    return pipeline.run_one(stage, _run_config(args))


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
