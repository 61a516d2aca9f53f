"""Every path inside a work folder and every file format, in one place.

Layout of a work folder (``RunConfig.workdir``)::

    config.yaml                     the config of the last finished `affinitynet run`
    metrics.json                    evaluation summary of `affinitynet run`
    classifier/                     stage 1: checkpoint.pt (resumable), final.pth, log.jsonl
    cam/<image>.npz                 stage 2a: CAMs (format below)
    cam_pred/<image>.png            stage 2a: CAM prediction (palette PNG)
    crf/<image>.npz                 stage 2b: dense-CRF scores of both alphas (format below)
    aff_labels/<image>.png          stage 2b: confident labels (0 bg, c+1 object, 255 unsure), for
                                    pictures, the report and diagnostics
    affinity/                       stage 3: checkpoint.pt, final.pth, log.jsonl
    pseudo_labels/<image>.png       stage 4: random-walk pseudo labels
    boundary/<image>.png            stage 4 with method irn: IRN's class-boundary map (format below)
    instances/<image>.json          stage 4 with method irn: instance pseudo labels (format below)
    segmentation/                   stage 5a: checkpoint.pt, final.pth, log.jsonl
    seg_pred/<image>.png            stage 5b: the segmentation network's labels
    vis/                            pictures of CAMs and labels
    report/                         `affinitynet report`: index.html, charts/*.png, gallery/*.png
    tune/                           `affinitynet tune`: tuned.yaml (a config fragment), tune.json
    records/<stage>.json            what made each stage's outputs (records.py): settings, inputs, version
    superseded/<stage>-<fingerprint>/  outputs of other settings, set aside (safe to delete)

CAM file format (``.npz``, no pickles), version 1:
``version`` int (1), ``keys`` int64 (k,) class indices present in the image (ascending),
``maps`` float16 (k, H, W) normalised CAMs in [0, 1], ``image_size`` int64 (2,) = (H, W),
``num_classes`` int (the dataset's object classes); with ``make_cam.fusion: irn`` (or IRN's
imported CAMs) also ``strided`` float16 (k, ceil(h/4), ceil(w/4)) in [0, 1], IRN's stride-4
``cam`` of the image at the run's working size (h, w) (= (H, W) at ``dataset.long_side`` 0);
readers that do not know it ignore it.

CRF score file format (``.npz``, no pickles), version 1, what AffinityNet trains on (the
original keeps the same scores, float32, in one ``.npy`` dict per alpha):
``version`` int (1), ``keys`` int64 (k,) class indices present in the image (ascending),
``low`` and ``high`` float16 (k+1, h, w) dense-CRF marginals of the low- and high-alpha
background score, background first, then the keys' classes, at the working size (h, w) =
``image_size`` int64 (2,).

Instance file format (``<image>.json``), the COCO results format that pycocotools' ``loadRes``
and other instance tools read: a JSON list with one object per detected instance,
``{"image_id": "<image>", "category_id": class index + 1 (the class's value in the label maps),
"segmentation": {"size": [H, W], "counts": compressed RLE string}, "score": float}``; an image
without instances has ``[]``. Concatenating the lists of several images gives one results file.

Boundary map (``<image>.png``): 8-bit grayscale PNG of IRN's class-boundary probability times
255 (0 = no boundary), on the stride-4 grid of the image at its working size: (ceil(h/4),
ceil(w/4)) for a working size (h, w).

Every file is written atomically: a temporary file in the same folder, then ``os.replace``;
so an interrupted stage never leaves a half-written output and a restart skips finished images.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from affinitynet.errors import InputError
from affinitynet.stage_table import STAGE_BY_NAME, STAGE_TABLE

CAM_FORMAT_VERSION = 1
CRF_FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class TrainingFolder:
    """The files of one training stage: ``checkpoint.pt`` (written every epoch, resumable),
    ``final.pth`` (the trained weights; its presence marks the stage done) and ``log.jsonl``
    (one record per step and per epoch)."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def final(self) -> Path:
        return self.root / "final.pth"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"


@dataclass(frozen=True)
class ReportFolder:
    """The HTML report of a work folder: ``index.html`` and the PNGs it shows, all inside the
    folder (relative links), so it opens offline and can be copied as a whole."""

    root: Path

    @property
    def index(self) -> Path:
        return self.root / "index.html"

    @property
    def charts(self) -> Path:
        return self.root / "charts"

    @property
    def gallery(self) -> Path:
        return self.root / "gallery"


@dataclass(frozen=True)
class WorkDir:
    """Paths of one pipeline run: every stage's outputs."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def classifier(self) -> TrainingFolder:
        return TrainingFolder(self.root / "classifier")

    @property
    def affinity(self) -> TrainingFolder:
        return TrainingFolder(self.root / "affinity")

    @property
    def segmentation(self) -> TrainingFolder:
        return TrainingFolder(self.root / "segmentation")

    @property
    def cam(self) -> Path:
        return self.root / "cam"

    @property
    def cam_pred(self) -> Path:
        return self.root / "cam_pred"

    @property
    def crf(self) -> Path:
        return self.root / "crf"

    @property
    def aff_labels(self) -> Path:
        return self.root / "aff_labels"

    @property
    def pseudo_labels(self) -> Path:
        return self.root / "pseudo_labels"

    @property
    def boundary(self) -> Path:
        return self.root / "boundary"

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    @property
    def seg_pred(self) -> Path:
        return self.root / "seg_pred"

    @property
    def label_folders(self) -> tuple[tuple[str, str, Path], ...]:
        """The stages' label-map folders in pipeline order, as (stage name, title in pictures, folder)."""
        return tuple((s.name, s.label_title, getattr(self, s.folder)) for s in STAGE_TABLE if not s.trains)

    def training(self, stage: str) -> TrainingFolder:
        """The folder of training stage ``stage`` (a name of the stage table)."""
        return getattr(self, STAGE_BY_NAME[stage].folder)

    @property
    def superseded(self) -> Path:
        """Where outputs of other settings are set aside (``records.py``)."""
        return self.root / "superseded"

    def record(self, stage: str) -> Path:
        """What made a stage's outputs (``records.py``)."""
        return self.root / "records" / f"{stage}.json"

    @property
    def vis(self) -> Path:
        return self.root / "vis"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def report(self) -> ReportFolder:
        return ReportFolder(self.root / "report")

    def cam_file(self, name: str) -> Path:
        return self.cam / f"{name}.npz"

    def crf_file(self, name: str) -> Path:
        return self.crf / f"{name}.npz"

    def instance_file(self, name: str) -> Path:
        return self.instances / f"{name}.json"

    @staticmethod
    def png(folder: Path, name: str) -> Path:
        return folder / f"{name}.png"


# ----------------------------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On any error (including a full disk) the temporary file is removed and ``path`` is left
    as it was, so readers never see half-written files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = new_temp_file(path)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and exc.errno == 28:  # ENOSPC
            raise InputError(f"{path}: no space left on the device; nothing was written") from None
        raise


def new_temp_file(path: Path) -> Path:
    """Create an empty, uniquely named temporary file next to ``path``: mode 0666 minus the
    umask, as a plain open() gives (mkstemp's would be 0600); its name starts with TMP_PREFIX,
    so a rerun can remove the ones a killed run left."""
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_lines(path: str | Path, lines: Iterable[str]) -> None:
    """A text file of one item per line (split lists, classes.txt), UTF-8, atomically."""
    write_bytes(path, "".join(f"{line}\n" for line in lines).encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON, atomically. NaN and infinities (e.g. the IoU of a class
    that occurs nowhere) become null; numpy numbers and arrays, tuples and paths are converted."""
    text = json.dumps(_json_safe(obj), indent=2, allow_nan=False, default=_json_default)
    write_bytes(path, (text + "\n").encode())


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file's content; InputError (one line, naming the file as ``what``) when it is
    missing or not JSON."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a valid JSON {what} ({exc})".splitlines()[0]) from None


def read_metrics(path: str | Path) -> dict[str, Any]:
    """``metrics.json`` as a dict: {} when it is missing or not a readable JSON object (it is
    rewritten whole by the next stage that finishes)."""
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _json_safe(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.ndarray):
        return _json_safe(v.tolist())
    return v


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line (logs are append-only; a torn last line is skipped by read_jsonl)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(_json_safe(record), allow_nan=False, default=_json_default) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    out = []
    if not Path(path).exists():
        return out
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def remove_stale_tmp(folder: str | Path) -> int:
    """Delete temporary files a killed run left behind; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.glob(TMP_PREFIX + "*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


# ----------------------------------------------------------------------------------------------
# CAM files
# ----------------------------------------------------------------------------------------------
def save_cam(path: str | Path, keys: np.ndarray, maps: np.ndarray, num_classes: int,
             strided: np.ndarray | None = None) -> None:
    """Write CAMs: keys (k,) class indices, maps (k, H, W) in [0, 1]; ``strided`` (k, h, w) in
    [0, 1], IRN's stride-4 CAMs, when the fusion made them."""
    keys = np.asarray(keys, dtype=np.int64)
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[0] != keys.shape[0]:
        raise ValueError(f"maps {maps.shape} do not match keys {keys.shape}")
    arrays = {
        "version": np.int64(CAM_FORMAT_VERSION),
        "keys": keys,
        "maps": maps.astype(np.float16),
        "image_size": np.asarray(maps.shape[1:], dtype=np.int64),
        "num_classes": np.int64(num_classes),
    }
    if strided is not None:
        if np.ndim(strided) != 3 or len(strided) != len(keys):
            raise ValueError(f"stride-4 maps {np.shape(strided)} do not match keys {keys.shape}")
        arrays["strided"] = np.asarray(strided).astype(np.float16)
    write_bytes(path, npz_bytes(arrays))


def load_strided_cam(path: str | Path) -> np.ndarray | None:
    """The stride-4 CAMs of a CAM file (k, h, w) float32, or None when it has none."""
    return load_cam_and_strided(path)[2]


def npz_bytes(arrays: dict[str, Any]) -> bytes:
    """A compressed ``.npz`` (what ``np.load`` reads) with fixed zip timestamps, so equal arrays
    give byte-identical files (reruns and sharded runs can be compared by bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    return buf.getvalue()


def load_cam(
    path: str | Path, image_size: tuple[int, int] | None = None, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a CAM file -> (keys int64 (k,), maps float32 (k, H, W)).

    Raises InputError naming the file when it is unreadable, of another version, or made for
    another image size or class count (e.g. a CAM folder from another dataset).
    """
    keys, maps, _ = load_cam_and_strided(path, image_size, num_classes)
    return keys, maps


def load_cam_and_strided(
    path: str | Path, image_size: tuple[int, int] | None = None, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``load_cam`` and, from the same read, the file's stride-4 maps (float32 (k, h, w)) or
    None when it has none (``make_cam.fusion: psa``, CAMs imported without IRN's ``cam``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: CAM file does not exist (run make-cam first)")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a readable CAM file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            version = int(z["version"])
            keys = z["keys"].astype(np.int64)
            maps = z["maps"].astype(np.float32)
            size = tuple(int(v) for v in z["image_size"])
            ncls = int(z["num_classes"])
            strided = z["strided"].astype(np.float32) if "strided" in z.files else None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: not a readable CAM file ({exc})") from None
    if version != CAM_FORMAT_VERSION:
        raise InputError(f"{path}: CAM format version {version}, expected {CAM_FORMAT_VERSION}")
    if image_size is not None and tuple(image_size) != size:
        raise InputError(
            f"{path}: CAM made for a {size[0]}x{size[1]} image, but the image is "
            f"{image_size[0]}x{image_size[1]} (CAMs from another dataset?)"
        )
    if num_classes is not None and ncls != num_classes:
        raise InputError(f"{path}: CAM made for {ncls} classes, but the dataset has {num_classes}")
    if keys.size and (keys.min() < 0 or keys.max() >= ncls):
        raise InputError(f"{path}: CAM class indices {keys.tolist()} outside 0..{ncls - 1}")
    return keys, maps, strided


# ----------------------------------------------------------------------------------------------
# CAMs in other toolkits' formats (``import-cams``, ``export-labels``)
# ----------------------------------------------------------------------------------------------
#: format -> the suffix of its per-image files (config.CAM_EXCHANGE_FORMATS names the same)
EXCHANGE_SUFFIX: dict[str, str] = {"psa": ".npy", "irn": ".npy", "npz": ".npz"}
#: formats whose files are Python pickles: reading one can run code
PICKLED_FORMATS = ("psa", "irn")


@dataclass(frozen=True)
class ExchangedCams:
    """The CAMs of one image as another toolkit stored them."""

    keys: np.ndarray  # (k,) int64 object-class indices (0 = the first object class)
    maps: np.ndarray  # (k, h, w) float32, as stored
    stride: int = 0  # 0: at the image size; 4: IRN's stride-4 ``cam`` (the file has no ``high_res``)
    strided: np.ndarray | None = None  # (k, h/4, w/4): IRN's stride-4 ``cam``, when the file has one


def read_exchange_cams(path: str | Path, fmt: str, trust_pickle: bool = False) -> ExchangedCams:
    """One image's CAMs in format ``fmt``:

    - ``psa``: ``np.save`` of a dict {class index: (H, W) map} (PSA's ``infer_cls.py``, SEAM,
      MCTformer);
    - ``irn``: ``np.save`` of a dict {"keys": (k,) class indices, "cam": (k, ceil(H/4), ceil(W/4)),
      "high_res": (k, H, W)}, arrays or torch tensors (IRN's ``make_cam.py``, ReCAM, AMN, CLIMS);
      ``high_res`` is used when present, else ``cam`` (``stride`` 4);
    - ``npz``: an ``.npz`` with ``keys`` (k,) and ``maps`` (k, H, W) (our CAM files are such
      files); read without pickles.

    The first two are pickles and are read only with ``trust_pickle``. Raises InputError naming
    the file when it cannot be read or does not hold what the format says.
    """
    path = Path(path)
    if fmt == "npz":
        return _read_npz_cams(path)
    if not trust_pickle:
        raise InputError(f"{path}: {fmt} CAM files are Python pickles, and reading a pickle can run any code it "
                         "holds; pass --trust-pickle if you trust where they come from (or write them as npz)")
    try:
        stored = np.load(path, allow_pickle=True)
    except Exception as exc:  # noqa: BLE001 - unpickling raises anything; each is "not readable"
        raise InputError(f"{path}: not a readable {fmt} CAM file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not (isinstance(stored, np.ndarray) and stored.dtype == object and stored.shape == ()
            and isinstance(stored.item(), dict)):
        what = f"an array of shape {stored.shape}" if isinstance(stored, np.ndarray) else type(stored).__name__
        raise InputError(f"{path}: holds {what}, not the dict of a {fmt} CAM file")
    content = stored.item()
    try:
        return _psa_cams(content) if fmt == "psa" else _irn_cams(content)
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: not a CAM file of the {fmt} format ({exc.args[0] if exc.args else exc})") from None


def _read_npz_cams(path: Path) -> ExchangedCams:
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not an .npz archive")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("keys", "maps") if k not in z.files]
            if missing:
                raise InputError(f"{path}: has no {' or '.join(missing)} array (it holds {', '.join(z.files)})")
            return ExchangedCams(np.asarray(z["keys"]).astype(np.int64).reshape(-1), _float_maps(z["maps"]))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: not a readable npz CAM file ({str(exc).splitlines()[0]})") from None


def _numpy(value: Any) -> np.ndarray:
    """An array from a numpy array or a (CPU) torch tensor, without importing torch."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _float_maps(value: Any) -> np.ndarray:
    maps = _numpy(value)
    if maps.dtype.kind not in "fiub":
        raise ValueError(f"maps of type {maps.dtype}")
    return maps.astype(np.float32)


def _psa_cams(content: dict) -> ExchangedCams:
    if not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in content):
        raise ValueError(f"keys {list(content)[:5]} are not class indices")
    keys = np.array(sorted(int(k) for k in content), np.int64)
    maps = [_float_maps(content[k]) for k in sorted(content)]
    if len({m.shape for m in maps}) > 1 or any(m.ndim != 2 for m in maps):
        raise ValueError(f"maps of shapes {sorted({m.shape for m in maps})}, expected one (H, W)")
    return ExchangedCams(keys, np.stack(maps) if maps else np.zeros((0, 0, 0), np.float32))


def _irn_cams(content: dict) -> ExchangedCams:
    if "keys" not in content or not ({"high_res", "cam"} & set(content)):
        raise KeyError(f"it has {sorted(map(str, content))}; expected keys and high_res or cam")
    keys = _numpy(content["keys"]).astype(np.int64).reshape(-1)
    strided = _float_maps(content["cam"]) if "cam" in content else None
    if "high_res" in content:
        return ExchangedCams(keys, _float_maps(content["high_res"]), strided=strided)
    return ExchangedCams(keys, strided, stride=4, strided=strided)


def write_exchange_cams(path: str | Path, fmt: str, keys: np.ndarray, maps: np.ndarray,
                        strided: np.ndarray | None = None) -> None:
    """Write one image's CAMs (keys (k,), maps (k, H, W) in [0, 1]) in format ``fmt`` as the
    other toolkit writes them (``read_exchange_cams``); ``irn`` also needs ``strided``, the
    stride-4 ``cam`` (k, ceil(H/4), ceil(W/4)), stored as a torch tensor as IRN does."""
    keys, maps = np.asarray(keys, np.int64), np.asarray(maps, np.float32)
    if fmt == "npz":
        write_bytes(path, npz_bytes({"keys": keys, "maps": maps}))
        return
    if fmt == "psa":
        content: dict[Any, Any] = {int(k): m for k, m in zip(keys, maps)}
    else:
        import torch

        if strided is None:
            raise ValueError("the irn format needs the stride-4 cam")
        content = {"keys": torch.from_numpy(keys), "cam": torch.from_numpy(np.asarray(strided, np.float32)),
                   "high_res": maps}
    buf = io.BytesIO()
    np.save(buf, content, allow_pickle=True)
    write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------------------------
# Instance files (COCO results format with RLE masks)
# ----------------------------------------------------------------------------------------------
def save_instances(path: str | Path, image_id: str, masks: np.ndarray, labels: np.ndarray,
                   scores: np.ndarray) -> None:
    """Write one image's instances: ``masks`` (N, H, W) bool, ``labels`` (N,) class indices
    (0-based, no background), ``scores`` (N,) -> the instance file format above."""
    from pycocotools import mask as mask_utils

    masks = np.asarray(masks, dtype=bool)
    labels, scores = np.asarray(labels, np.int64).reshape(-1), np.asarray(scores, np.float64).reshape(-1)
    if masks.ndim != 3 or not len(masks) == labels.size == scores.size:
        raise ValueError(f"need masks (N, H, W) and N labels and scores, got {masks.shape}, {labels.size}, "
                         f"{scores.size}")
    entries = []
    for mask, label, score in zip(masks, labels, scores):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        entries.append({"image_id": image_id, "category_id": int(label) + 1,
                        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()},
                        "score": float(score)})
    write_json(path, entries)


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """A pycocotools RLE (``size`` [H, W], ``counts``) -> (H, W) bool mask; ValueError when the
    runs do not fit the size."""
    import warnings

    from pycocotools import mask as mask_utils

    with warnings.catch_warnings():
        # pycocotools' decode on numpy 2 warns about np.array(copy=False); harmless
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def load_instances(path: str | Path, image_size: tuple[int, int], num_classes: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's instance file -> (masks (N, H, W) bool, labels (N,) int64 class indices,
    scores (N,) float64); InputError (one line, naming the file) when it is not that format,
    a mask is not ``image_size`` (H, W) or a class is outside 1..``num_classes``."""
    path = Path(path)
    entries = read_json(path, "instance file")
    if not isinstance(entries, list):
        raise InputError(f"{path}: expected a JSON list of instances (COCO results format)")
    masks, labels, scores = [], [], []
    for i, entry in enumerate(entries):
        seg = entry.get("segmentation") if isinstance(entry, dict) else None
        if not isinstance(seg, dict) or not isinstance(seg.get("counts"), str) or "score" not in entry:
            raise InputError(f"{path}: instance {i} needs 'category_id', 'score' and an RLE 'segmentation'")
        if list(seg.get("size", [])) != list(image_size):
            raise InputError(f"{path}: instance {i} has size {seg.get('size')}, the image is {list(image_size)}")
        category = entry.get("category_id")
        if not isinstance(category, int) or not 1 <= category <= num_classes:
            raise InputError(f"{path}: instance {i} has category_id {category!r}, expected 1..{num_classes}")
        try:  # pycocotools checks that the runs add up to the size
            masks.append(decode_rle({"size": list(image_size), "counts": seg["counts"]}))
        except ValueError as exc:
            raise InputError(f"{path}: instance {i}: {exc}") from None
        labels.append(category - 1)
        scores.append(float(entry["score"]))
    stacked = np.stack(masks) if masks else np.zeros((0, *image_size), bool)
    return stacked, np.asarray(labels, np.int64), np.asarray(scores, np.float64)


# ----------------------------------------------------------------------------------------------
# Boundary maps (8-bit grayscale PNG)
# ----------------------------------------------------------------------------------------------
def save_boundary(path: str | Path, boundary: np.ndarray) -> None:
    """Write a boundary map (h, w) with values in [0, 1] as the boundary format above."""
    from PIL import Image

    values = np.clip(np.rint(np.asarray(boundary, np.float32) * 255), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(values, mode="L").save(buf, format="PNG")
    write_bytes(path, buf.getvalue())


def load_boundary(path: str | Path) -> np.ndarray:
    """A boundary map file -> (h, w) float32 in [0, 1]; InputError when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode != "L":
                raise InputError(f"{path}: a boundary map is an 8-bit grayscale PNG, this one is mode {im.mode}")
            return np.asarray(im, dtype=np.float32) / 255
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"{path}: unreadable boundary map ({exc})") from None


# ----------------------------------------------------------------------------------------------
# CRF score files
# ----------------------------------------------------------------------------------------------
def save_crf_scores(path: str | Path, keys: np.ndarray, low: np.ndarray, high: np.ndarray,
                    dtype: type = np.float16) -> None:
    """Write the CRF scores of one image: keys (k,) class indices, low / high (k+1, h, w) in
    [0, 1], background first. ``dtype`` float16 (the pipeline's) or float32 (exact)."""
    keys = np.asarray(keys, dtype=np.int64)
    low, high = np.asarray(low), np.asarray(high)
    if low.shape != high.shape or low.ndim != 3 or low.shape[0] != keys.shape[0] + 1:
        raise ValueError(f"scores {low.shape} / {high.shape} do not match keys {keys.shape} (+ background)")
    write_bytes(path, npz_bytes({
        "version": np.int64(CRF_FORMAT_VERSION),
        "keys": keys,
        "low": low.astype(dtype),
        "high": high.astype(dtype),
        "image_size": np.asarray(low.shape[1:], dtype=np.int64),
    }))


def load_crf_scores(path: str | Path, image_size: tuple[int, int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a CRF score file -> (keys int64 (k,), low, high float32 (k+1, h, w)).

    Raises InputError naming the file and the stage that writes it when it is missing,
    unreadable (truncated, corrupt), of another version, or made for another image size.
    """
    path = Path(path)
    rewrite = "remove it and run make-aff-labels again, which rewrites it"
    if not path.exists():
        raise InputError(f"{path}: CRF scores do not exist (run make-aff-labels first)")
    try:
        with np.load(path, allow_pickle=False) as z:
            version = int(z["version"])
            keys = z["keys"].astype(np.int64)
            low = z["low"].astype(np.float32)
            high = z["high"].astype(np.float32)
            size = tuple(int(v) for v in z["image_size"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: not a readable CRF score file ({exc}); {rewrite}") from None
    if version != CRF_FORMAT_VERSION:
        raise InputError(f"{path}: CRF score format version {version}, expected {CRF_FORMAT_VERSION}; {rewrite}")
    if low.shape != high.shape or low.shape != (len(keys) + 1, *size):
        raise InputError(f"{path}: CRF scores of shape {low.shape} / {high.shape} do not fit {len(keys)} classes "
                         f"at {size[0]}x{size[1]}; {rewrite}")
    if image_size is not None and tuple(image_size) != size:
        raise InputError(f"{path}: CRF scores made for a {size[1]}x{size[0]} image, but the image is "
                         f"{image_size[1]}x{image_size[0]} at its working size (scores from another dataset or "
                         f"dataset.long_side?); {rewrite}")
    return keys, low, high


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save atomically. ``state`` holds tensors, numbers, strings, lists and dicts only, so
    that it loads with ``weights_only=True``."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # through a Python file object: a full disk then raises OSError(ENOSPC), which
        # atomic_path reports; torch.save(state, path) would raise an opaque RuntimeError
        torch.save(state, f)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load with ``weights_only=True``: a checkpoint from elsewhere can never run code."""
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: checkpoint does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: not a loadable checkpoint ({torch_load_error(exc)})") from None


def torch_load_error(exc: BaseException) -> str:
    """A one-line reason for a failed ``torch.load``; a file that holds Python objects (maybe
    malicious) is named as such instead of torch's long advice to load it unsafely."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (f"it holds the Python object {found.group(1)}; loading with weights_only=True "
                "refuses to run it. Load only tensors from files you trust")
    if "Weights only load failed" in text:
        return "it holds Python objects other than tensors; loading with weights_only=True refuses them"
    # the first sentence: torch appends paragraphs of advice to a corrupt archive's message
    return text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
