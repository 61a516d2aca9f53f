"""``prepare-coco`` on a tiny COCO 2014 tree built here (affinitynet.data.prepare_coco), and the
whole pipeline on a small generated COCO-layout set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from affinitynet import artifacts
from affinitynet.cli import main
from affinitynet.config import PrepareCOCOConfig
from affinitynet.data.images import load_label_png, load_rgb
from affinitynet.data.prepare_coco import Instance, rasterize, rasterize_both
from affinitynet.data.synthetic import make_sample
from affinitynet.data.voc import VOCDataset
from affinitynet.errors import InputError
from affinitynet.stages import prepare_coco as stage

from _helpers import single_torch_thread, tiny_sets

# out of id order on purpose, ids not contiguous, a name with a space (as COCO's "traffic light")
CATEGORIES = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 10, "name": "traffic light"},
              {"id": 3, "name": "car"}]
CLASSES = ["person", "car", "traffic light", "dog"]  # by id: labels 1, 2, 3, 4
PERSON, CAR, LIGHT, DOG = 1, 2, 3, 4


def rect(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    """A polygon around pixels x0..x1-1, y0..y1-1 (pycocotools fills those exactly)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def box_mask(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """Column-major run lengths starting with a run of zeros (COCO's crowd format)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def ann(ann_id: int, image_id: int, cat: int, seg, crowd: int = 0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": seg, "iscrowd": crowd,
            "area": 0.0, "bbox": [0, 0, 1, 1]}


def expected_a() -> np.ndarray:
    """Image A (12 wide, 10 high): person polygon x 0..7, y 0..7 (64 px); car compressed RLE
    x 5..9, y 5..8 (20 px) on top of it: the smaller car wins the overlap."""
    gt = np.zeros((10, 12), np.uint8)
    gt[0:8, 0:8] = PERSON
    gt[5:9, 5:10] = CAR
    return gt


def expected_b() -> np.ndarray:
    """Image B (8x8): dog (ann 30) x 0..3 y 0..3 and traffic light (ann 20) x 2..5 y 2..5, both
    16 px: the tie goes to the lower id, the light; a car as uncompressed RLE x 6..7 y 0..1; a
    crowd of persons over y 5..7 is 255 except where the light covers it (y 5, x 2..5)."""
    gt = np.zeros((8, 8), np.uint8)
    gt[5:8, :] = 255
    gt[0:4, 0:4] = DOG
    gt[2:6, 2:6] = LIGHT
    gt[0:2, 6:8] = CAR
    return gt


def write_image(path: Path, width: int, height: int, orientation: int | None = None) -> None:
    img = Image.fromarray(np.random.default_rng(width * height).integers(0, 255, (height, width, 3), np.uint8))
    if orientation is None:
        img.save(path, quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(path, quality=95, exif=exif)


@pytest.fixture()
def coco(tmp_path):
    """train: A (2 objects, overlap), B (tie, RLE, crowd), C (no annotation);
    val: D (8 wide x 6 high, EXIF orientation 6 = shown rotated), E (dog), F (no annotation)."""
    root = tmp_path / "coco"
    for d in ("train2014", "val2014", "annotations"):
        (root / d).mkdir(parents=True)
    train_images = [(5, "COCO_train2014_000000000005.jpg", 12, 10), (2, "COCO_train2014_000000000002.jpg", 8, 8),
                    (9, "COCO_train2014_000000000009.jpg", 8, 8)]
    val_images = [(100, "COCO_val2014_000000000100.jpg", 8, 6), (101, "COCO_val2014_000000000101.jpg", 8, 8),
                  (102, "COCO_val2014_000000000102.jpg", 9, 9)]
    for image_id, file_name, w, h in train_images:
        write_image(root / "train2014" / file_name, w, h)
    for image_id, file_name, w, h in val_images:
        write_image(root / "val2014" / file_name, w, h, orientation=6 if image_id == 100 else None)
    train_anns = [
        ann(7, 5, 1, rect(0, 0, 8, 8)),
        ann(8, 5, 3, compressed_rle(box_mask(10, 12, 5, 5, 10, 9))),
        ann(30, 2, 18, rect(0, 0, 4, 4)),
        ann(20, 2, 10, rect(2, 2, 6, 6) + [[1, 1, 2, 2]]),  # plus a degenerate 2-point polygon: no area
        ann(21, 2, 3, uncompressed_rle(box_mask(8, 8, 6, 0, 8, 2))),
        ann(22, 2, 1, uncompressed_rle(box_mask(8, 8, 0, 5, 8, 8)), crowd=1),
    ]
    val_anns = [ann(40, 100, 3, rect(0, 0, 3, 2)), ann(41, 101, 18, rect(1, 1, 5, 5))]

    def dump(name, images, anns):
        data = {"info": {}, "licenses": [], "categories": CATEGORIES, "annotations": anns,
                "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h in images]}
        (root / "annotations" / name).write_text(json.dumps(data))

    dump("instances_train2014.json", train_images, train_anns)
    dump("instances_val2014.json", val_images, val_anns)
    return root


def test_lists_labels_masks_and_links(coco, tmp_path):
    out = tmp_path / "prepared"
    res = stage.run(PrepareCOCOConfig(coco_root=str(coco), out=str(out), processes=1))
    ds = VOCDataset(out)
    assert ds.classes == CLASSES and ds.num_classes == 4
    # image-id order; images without annotations are listed apart and left out
    assert ds.split("train") == ["COCO_train2014_000000000002", "COCO_train2014_000000000005"]
    assert ds.split("val") == ["COCO_val2014_000000000100", "COCO_val2014_000000000101"]
    assert ds.split("no_objects_train", check_images=False) == ["COCO_train2014_000000000009"]
    assert ds.split("no_objects_val", check_images=False) == ["COCO_val2014_000000000102"]
    assert (res["train"], res["val"], res["no_objects_train"], res["no_objects_val"]) == (2, 2, 1, 1)
    # labels: every annotation's category, the crowd's too, in class order
    assert ds.label_names("COCO_train2014_000000000005") == ["person", "car"]
    assert ds.label_names("COCO_train2014_000000000002") == ["person", "car", "traffic light", "dog"]
    assert ds.label_names("COCO_val2014_000000000100") == ["car"]
    assert json.loads((out / "labels.json").read_text())["COCO_train2014_000000000009"] == []
    np.testing.assert_array_equal(ds.load_gt("COCO_train2014_000000000005"), expected_a())
    np.testing.assert_array_equal(ds.load_gt("COCO_train2014_000000000002"), expected_b())
    gt_e = np.zeros((8, 8), np.uint8)
    gt_e[1:5, 1:5] = DOG
    np.testing.assert_array_equal(ds.load_gt("COCO_val2014_000000000101"), gt_e)
    assert not ds.has_gt("COCO_train2014_000000000009")  # no mask for an image no split lists
    # instance ground truth as VOC's SegmentationObject: one id per non-crowd annotation (20, 21, 30)
    from affinitynet.algorithms.metrics import voc_instances

    name = "COCO_train2014_000000000002"
    masks, classes = voc_instances(ds.load_gt(name), ds.load_objects(name))
    assert [ds.classes[c] for c in classes] == ["traffic light", "car", "dog"]
    assert (ds.load_objects(name)[ds.load_gt(name) == 255] == 255).all()
    # the EXIF-tagged image: read on its stored grid, as its mask is drawn (the stored 3x2 car at
    # the top left); with dataset.exif_transpose both turn alike (orientation 6: 90 degrees
    # clockwise), so the car ends at the top right of the upright 6x8 picture
    image = ds.load_image("COCO_val2014_000000000100")
    gt_d = ds.load_gt("COCO_val2014_000000000100")
    assert image.shape[:2] == gt_d.shape == (6, 8)
    expected_d = np.zeros((6, 8), np.uint8)
    expected_d[0:2, 0:3] = CAR
    np.testing.assert_array_equal(gt_d, expected_d)
    upright = VOCDataset(out, exif_transpose=True)
    image_up, gt_up = upright.load_image("COCO_val2014_000000000100"), upright.load_gt("COCO_val2014_000000000100")
    assert image_up.shape[:2] == gt_up.shape == (8, 6)
    np.testing.assert_array_equal(gt_up, np.rot90(expected_d, -1))
    np.testing.assert_array_equal(image_up, np.rot90(image, -1))
    # images are symlinks to the user's files, by absolute path
    link = out / "JPEGImages" / "COCO_train2014_000000000005.jpg"
    assert link.is_symlink() and Path(os.readlink(link)) == (coco / "train2014" / link.name).resolve()
    assert res["links"]["symlink"] == 4 and not (out / "JPEGImages" / "COCO_train2014_000000000009.jpg").exists()
    np.testing.assert_array_equal(image, load_rgb(coco / "val2014" / "COCO_val2014_000000000100.jpg"))


def test_rasterize_rule_directly():
    """The overlap rule without files: smaller area wins; equal areas: lower annotation id."""
    a = Instance(5, CAR, False, rect(0, 0, 4, 4))
    b = Instance(3, DOG, False, rect(2, 0, 6, 4))  # same area as a, lower id
    c = Instance(9, PERSON, False, rect(3, 1, 4, 2))  # 1 px inside both
    got = rasterize([a, b, c], 4, 6)
    want = np.zeros((4, 6), np.uint8)
    want[:, 0:2] = CAR
    want[:, 2:6] = DOG
    want[1, 3] = PERSON
    np.testing.assert_array_equal(got, want)
    # order of the input does not matter
    np.testing.assert_array_equal(rasterize([c, b, a], 4, 6), want)
    # the instance map: the same rule, instances numbered by annotation id (b 3, a 5, c 9)
    label, objects = rasterize_both([c, a, b], 4, 6)
    want_objects = np.zeros((4, 6), np.uint8)
    want_objects[:, 0:2], want_objects[:, 2:6], want_objects[1, 3] = 2, 1, 3
    np.testing.assert_array_equal(label, want)
    np.testing.assert_array_equal(objects, want_objects)
    # a crowd region no instance covers is 255 in both
    crowd = Instance(11, CAR, True, rect(0, 0, 6, 1))
    label, objects = rasterize_both([crowd, c], 4, 6)
    assert (label[0] == 255).all() and (objects[0] == 255).all() and objects[1, 3] == 1 and label[1, 3] == PERSON


def test_rerun_skips_finished_masks(coco, tmp_path):
    out = tmp_path / "prepared"
    cfg = PrepareCOCOConfig(coco_root=str(coco), out=str(out), processes=2)
    first = stage.run(cfg)
    assert first["masks_written_train"] == 2 and first["masks_written_val"] == 2
    gt = out / "SegmentationClass"
    before = {p.name: p.stat().st_mtime_ns for p in gt.glob("*.png")}
    (gt / "COCO_train2014_000000000002.png").unlink()
    (out / "SegmentationObject" / "COCO_val2014_000000000100.png").unlink()  # e.g. prepared by an older version
    (gt / f"{artifacts.TMP_PREFIX}COCO_val2014_000000000101.png.dead").write_bytes(b"half")  # a killed write
    second = stage.run(cfg)
    assert (second["masks_written_train"], second["masks_written_val"]) == (1, 1)
    assert (out / "SegmentationObject" / "COCO_val2014_000000000100.png").is_file()
    assert second["links"] == {"symlink": 0, "hardlink": 0, "copy": 0, "kept": 4}
    after = {p.name: p.stat().st_mtime_ns for p in gt.glob("*.png")}
    assert set(after) == set(before) and sorted(p.name for p in gt.iterdir()) == sorted(before)
    rewritten = ("COCO_train2014_000000000002.png", "COCO_val2014_000000000100.png")
    assert all(after[n] == before[n] for n in before if n not in rewritten)
    np.testing.assert_array_equal(load_label_png(gt / "COCO_train2014_000000000002.png"), expected_b())


def test_default_output_is_the_coco_root_and_cli(coco, capsys):
    assert main(["prepare-coco", "--coco-root", str(coco), "--processes", "1"]) == 0
    assert "4 classes; train 2 images (1 without objects left out), val 2" in capsys.readouterr().out
    assert VOCDataset(coco).split("train") == ["COCO_train2014_000000000002", "COCO_train2014_000000000005"]


@pytest.mark.parametrize("damage, message", [
    (lambda d: "{not json", "not a valid JSON"),
    (lambda d: {k: v for k, v in d.items() if k != "annotations"}, "no 'annotations' list"),
    (lambda d: {**d, "annotations": d["annotations"] + [ann(99, 5, 77, rect(0, 0, 2, 2))]},
     "annotation 99 has category 77"),
    (lambda d: {**d, "annotations": d["annotations"] + [ann(98, 12345, 1, rect(0, 0, 2, 2))]},
     "refers to image 12345"),
    (lambda d: {**d, "annotations": [{**a, "segmentation": {"size": [3, 3], "counts": "0"}} if a["id"] == 8 else a
                                     for a in d["annotations"]]}, "RLE size"),
    (lambda d: {**d, "annotations": [{**a, "segmentation": [[1, 2, 3]]} if a["id"] == 7 else a
                                     for a in d["annotations"]]}, "polygon"),
    (lambda d: {**d, "annotations": [{**a, "segmentation": {"size": [10, 12], "counts": "@@@"}}
                                     if a["id"] == 8 else a for a in d["annotations"]]}, "cannot be rasterised"),
])
def test_malformed_annotation_file_is_one_error_naming_it(coco, tmp_path, damage, message):
    path = coco / "annotations" / "instances_train2014.json"
    damaged = damage(json.loads(path.read_text()))
    path.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    with pytest.raises(InputError, match=message) as err:
        stage.run(PrepareCOCOConfig(coco_root=str(coco), out=str(tmp_path / "out"), processes=1))
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out" / "ImageSets").exists()  # lists are written last


def test_missing_inputs(coco, tmp_path):
    with pytest.raises(InputError, match="not a COCO 2014 folder"):
        stage.run(PrepareCOCOConfig(coco_root=str(tmp_path / "nowhere")))
    (coco / "train2014" / "COCO_train2014_000000000005.jpg").unlink()
    with pytest.raises(InputError, match="COCO_train2014_000000000005.jpg: image listed in .*instances_train2014"):
        stage.run(PrepareCOCOConfig(coco_root=str(coco), out=str(tmp_path / "out"), processes=1))
    write_image(coco / "train2014" / "COCO_train2014_000000000005.jpg", 10, 10)  # not 12x10 as annotated
    with pytest.raises(InputError, match="image is 10x10 px, but .*instances_train2014.json says 12x10"):
        stage.run(PrepareCOCOConfig(coco_root=str(coco), out=str(tmp_path / "out"), processes=1))


# -- the whole pipeline on a generated COCO-layout set ------------------------------------------
SYNTH_CATEGORIES = [{"id": 2, "name": "stripes"}, {"id": 5, "name": "polka dots"}, {"id": 7, "name": "checker"},
                    {"id": 11, "name": "rings"}]


def write_synthetic_coco(root: Path, n_train: int, n_val: int) -> None:
    """COCO 2014 layout from the synthetic scenes (4 classes): JPEGs and instance files with one
    compressed-RLE annotation per object; plus one train image without objects."""
    for d in ("train2014", "val2014", "annotations"):
        (root / d).mkdir(parents=True)
    ann_id = 1
    for split, folder, count in (("train", "train2014", n_train), ("val", "val2014", n_val)):
        images, anns = [], []
        for i in range(count + (split == "train")):
            s = make_sample(3, split, i, num_classes=4)
            file_name = f"COCO_{folder}_{i:012d}.jpg"
            Image.fromarray(s.image).save(root / folder / file_name, quality=95)
            images.append({"id": i, "file_name": file_name, "height": s.image.shape[0], "width": s.image.shape[1]})
            if i == count:  # the extra image: no annotation
                continue
            for cls, mask in zip(s.object_classes, s.object_masks):
                anns.append(ann(ann_id, i, SYNTH_CATEGORIES[cls]["id"], compressed_rle(mask)))
                ann_id += 1
        data = {"images": images, "annotations": anns, "categories": SYNTH_CATEGORIES}
        (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(data))


def test_pipeline_runs_on_prepared_coco(tmp_path):
    coco, data, work = tmp_path / "coco", tmp_path / "data", tmp_path / "work"
    write_synthetic_coco(coco, n_train=10, n_val=6)
    assert main(["prepare-coco", "--coco-root", str(coco), "--out", str(data), "--processes", "1"]) == 0
    sets = tiny_sets(cam_epochs=2, crf_iterations=2, logt=3) + [
        "dataset.long_side=128", "train_aff.epochs=2", "train_aff.crop=80", "train_aff.resize_long=[96,128]",
        "train_aff.batch_size=4", "train_seg.epochs=1", "train_seg.crop=64", "train_seg.resize_long=[96,128]",
        "train_seg.batch_size=4", "segment.num_workers=0"]
    with single_torch_thread():
        assert main(["run", "--config", "demo", "--dataset", str(data), "--workdir", str(work),
                     *[f"--set={s}" for s in sets]]) == 0
    metrics = json.loads((work / "metrics.json").read_text())
    classes = ["background", "stripes", "polka dots", "checker", "rings"]
    for key in ("make_cam", "random_walk", "segment"):
        assert list(metrics[key]["per_class"]) == classes, key
        assert 0 <= metrics[key]["miou"] <= 100
    assert metrics["eval_split"] == "val"
    # the train image without objects got no CAM: prepare-coco left it out of the split
    assert len(list((work / "cam").glob("*.npz"))) == 16


def test_hard_links_where_symlinks_fail(coco, tmp_path, monkeypatch):
    def no_symlinks(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    out = tmp_path / "prepared"
    with pytest.warns(UserWarning, match="symlinks are not possible"):
        res = stage.run(PrepareCOCOConfig(coco_root=str(coco), out=str(out), processes=1))
    assert res["links"]["symlink"] == 0 and res["links"]["hardlink"] + res["links"]["copy"] == 4
    link = out / "JPEGImages" / "COCO_train2014_000000000005.jpg"
    assert not link.is_symlink() and link.read_bytes() == (coco / "train2014" / link.name).read_bytes()
