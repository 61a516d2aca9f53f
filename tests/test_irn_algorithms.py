"""IRN's pure algorithms against the golden outputs of the original IRN code (golden README,
"IRN golden files"), plus hand-checked cases: path index, boundary affinities, the stride-4
walk and its labels, IR labels (label CRF), training pair labels, instance pseudo labels, mask AP."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch
from conftest import golden_cases, rel_err

from affinitynet.algorithms.boundary import (boundary_walk, boundary_walks, canvas_crop, edge_to_affinity, edge_to_affinity_indexed,
                                             grid_boundary_affinity, ir_pair_labels, pair_labels,
                                             semantic_label, semantic_pseudo_label, top_left_box, upsample_walk)
from affinitynet.algorithms.crf import IRN_LABEL_KERNELS, combine_ir_labels, ir_label, ir_label_parts, label_crf
from affinitynet.algorithms.instances import (detect_instances, find_centroids, instance_map, instance_pseudo_labels,
                                              instance_shapes, label_components)
from affinitynet.algorithms.metrics import InstanceAP, mask_iou, voc_average_precision, voc_instances
from affinitynet.algorithms.path_index import direction_path, directions, path_index
from affinitynet.algorithms.random_walk import (grid_affinity_dense, grid_transition, random_walk_dense,
                                                random_walk_steps)
from affinitynet.algorithms.resize import resize_image, resize_label

# IRN's settings (the original's run_sample.py defaults and hard-coded constants) for the checks
STRIDE = 4
CRF_STEPS, GT_PROB = 10, 0.7
CENTROID_STEPS, WEAK_DISPLACEMENT, MIN_AREA_FRACTION = 300, 2.5, 0.01
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def irn_normalize(image: np.ndarray) -> np.ndarray:
    """IRN's loader normalisation: float64 per channel, stored as float32, HWC."""
    return ((image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


# --- path index and boundary affinities ---------------------------------------------------------


@pytest.mark.parametrize("path", golden_cases("irn_path_index_*.npz"))
def test_path_index_golden(path):
    g = np.load(path)
    index = path_index(int(g["radius"]), int(g["height"]), int(g["width"]))
    assert int(g["radius_floor"]) == index.radius - 1
    assert len(index.paths) == int(g["n_groups"])
    for name, ours in (("search_dst", index.directions), ("src_indices", index.src_indices),
                       ("dst_indices", index.dst_indices)):
        assert ours.dtype == g[name].dtype and np.array_equal(ours, g[name]), name
    np.testing.assert_array_equal(directions(index.radius), g["search_dst"])
    for i in range(int(g["n_groups"])):
        np.testing.assert_array_equal(index.paths[i], g[f"search_paths_{i}"])
        assert index.path_indices[i].dtype == np.int64
        np.testing.assert_array_equal(index.path_indices[i], g[f"path_indices_{i}"])


def test_direction_path_hand_cases():
    np.testing.assert_array_equal(direction_path(0, 3), [[0, 3], [0, 2], [0, 1], [0, 0]])
    # (0, 1) and (1, 0) lie 1/sqrt(2) from the diagonal; ties in |y| + |x| keep row-major order
    np.testing.assert_array_equal(direction_path(1, 1), [[1, 1], [0, 1], [1, 0], [0, 0]])
    # every point of the 2x3 box is closer than 1 to the line through (0, 0) and (1, -2)
    np.testing.assert_array_equal(direction_path(1, -2), [[1, -2], [0, -2], [1, -1], [0, -1], [1, 0], [0, 0]])
    assert len(direction_path(0, 4)) == 5 and len(direction_path(2, 4)) == 11  # shortest / longest at radius 5
    assert len(directions(5)) == 34 and len(directions(10)) == 152
    with pytest.raises(ValueError, match="too small"):
        path_index(5, 4, 20)


@pytest.mark.parametrize("path", golden_cases("irn_edge_to_affinity_*.npz"))
def test_edge_to_affinity_golden(path):
    g = np.load(path)
    edge = torch.from_numpy(g["edge"])
    radius = int(g["radius"])
    index = path_index(radius, *edge.shape[1:])
    np.testing.assert_array_equal(index.src_indices, g["src_indices"])
    np.testing.assert_array_equal(index.dst_indices, g["dst_indices"])
    aff = edge_to_affinity(edge, radius)
    assert aff.dtype == torch.float32 and aff.shape == g["aff"].shape
    np.testing.assert_array_equal(aff.numpy(), g["aff"])
    np.testing.assert_array_equal(edge_to_affinity(edge[:, None], radius).numpy(), g["aff"])
    np.testing.assert_array_equal(edge_to_affinity_indexed(edge, index).numpy(), g["aff"])


def test_edge_to_affinity_gradient_reaches_the_path_maximum():
    edge = torch.zeros(1, 6, 9)
    edge[0, 0, 5] = 0.5
    edge.requires_grad_(True)
    aff = edge_to_affinity(edge, 5)  # one source cell (0, 4); direction 0 is (0, 1) through (0, 5)
    aff[0, 0, 0].backward()
    expected = torch.zeros(1, 6, 9)
    expected[0, 0, 5] = -1
    torch.testing.assert_close(edge.grad, expected)


def original_grid_matrix(edge: torch.Tensor, radius: int) -> np.ndarray:
    """The walk's affinity matrix the way the original builds it: pad the map with 1.0 (radius
    columns left and right, radius rows at the bottom), pair affinities of the padded grid
    through its path index, dense (from, to) + (to, from) + diagonal, cropped to the grid."""
    height, width = edge.shape
    hp, wp = height + radius, width + 2 * radius
    padded = torch.nn.functional.pad(edge, (radius, radius, 0, radius), value=1.0)
    index = path_index(radius, hp, wp)
    aff = edge_to_affinity_indexed(padded[None], index)[0].numpy()
    dense = np.zeros((hp * wp, hp * wp), np.float64)
    src = np.broadcast_to(index.src_indices, index.dst_indices.shape)
    dense[src.ravel(), index.dst_indices.ravel()] = aff.ravel()
    dense[index.dst_indices.ravel(), src.ravel()] = aff.ravel()
    dense[np.arange(hp * wp), np.arange(hp * wp)] = 1
    dense = dense.reshape(hp, wp, hp, wp)[:height, radius:radius + width, :height, radius:radius + width]
    return dense.reshape(height * width, height * width)


@pytest.mark.parametrize("hw,radius", [((9, 13), 5), ((6, 4), 5), ((11, 8), 3)])
def test_grid_boundary_affinity_is_the_original_padded_matrix(hw, radius):
    edge = torch.rand(*hw, generator=torch.Generator().manual_seed(sum(hw)), dtype=torch.float64)
    weights, offsets = grid_boundary_affinity(edge, radius)
    assert offsets == [tuple(d) for d in directions(radius).tolist()]
    ours = grid_affinity_dense(weights, offsets).numpy()
    np.testing.assert_array_equal(ours, original_grid_matrix(edge, radius))


# --- the stride-4 walk --------------------------------------------------------------------------


def walk_inputs(g):
    return torch.from_numpy(g["cams"]), torch.from_numpy(g["edge"])


@pytest.mark.parametrize("method,tol", [("sparse", 1e-3), ("dense", 5e-4)])
@pytest.mark.parametrize("path", golden_cases("irn_random_walk_*.npz"))
def test_semantic_walk_golden(path, method, tol):
    g = np.load(path)
    cams, edge = walk_inputs(g)
    image_hw = g["image"].shape[:2]
    assert tuple(cams.shape[-2:]) == ((image_hw[0] - 1) // STRIDE + 1, (image_hw[1] - 1) // STRIDE + 1)
    label, rw, rw_up = semantic_pseudo_label(cams, g["keys"], edge, image_hw, float(g["beta"]), int(g["exp_times"]),
                                             float(g["sem_seg_bg_thres"]), int(g["radius"]), STRIDE, method)
    assert rw.dtype == torch.float32 and rw.shape == g["rw"][:, 0].shape
    assert rel_err(rw, g["rw"][:, 0]) <= tol
    assert rw_up.shape == g["rw_up"].shape and rel_err(rw_up, g["rw_up"]) <= tol
    assert label.dtype == np.uint8 and label.shape == g["label"].shape
    assert (label == g["label"]).mean() >= 0.999


@pytest.mark.parametrize("path", golden_cases("irn_random_walk_*.npz"))
def test_walk_upsampling_and_label_from_stored_rw(path):
    g = np.load(path)
    rw_up = upsample_walk(torch.from_numpy(g["rw"][:, 0]), g["image"].shape[:2], STRIDE)
    assert rel_err(rw_up, g["rw_up"]) <= 1e-6
    label = semantic_label(torch.from_numpy(g["rw_up"]), g["keys"], float(g["sem_seg_bg_thres"]))
    np.testing.assert_array_equal(label, g["label"])


@pytest.mark.parametrize("hw,radius,seed", [((21, 31), 5, 0), ((17, 9), 5, 1), ((6, 40), 5, 2), ((12, 12), 3, 3)])
def test_boundary_walk_sparse_equals_dense_random(hw, radius, seed):
    """The generalised sparse walk on boundary affinities equals the dense original form."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    # a ring-shaped boundary plus noise: a walk that must not cross it
    ring = torch.exp(-((torch.hypot(yy - h / 2, xx - w / 2) - min(h, w) / 3) ** 2))
    edge = (0.8 * ring + 0.2 * torch.rand(h, w, generator=g, dtype=torch.float64)).clamp(0, 1)
    maps = torch.rand(3, h, w, generator=g, dtype=torch.float64) ** 4
    sparse = boundary_walk(maps, edge, beta=10, exp_times=8, radius=radius, method="sparse")
    dense = boundary_walk(maps, edge, beta=10, exp_times=8, radius=radius, method="dense")
    assert sparse.dtype == torch.float64 and sparse.shape == (3, h, w)
    assert rel_err(sparse, dense) <= 1e-9
    # float32 stays inside the iterative tolerance
    sparse32 = boundary_walk(maps.float(), edge.float(), beta=10, exp_times=8, radius=radius)
    assert sparse32.dtype == torch.float32 and rel_err(sparse32, dense) <= 1e-3
    # the same walk through the shared pieces, any offset order
    weights, offsets = grid_boundary_affinity(edge, radius)
    x = maps * (1 - edge)
    order = torch.randperm(len(offsets), generator=g)
    shuffled = grid_transition(weights[order], [offsets[i] for i in order.tolist()], 10)
    torch.testing.assert_close(random_walk_steps(x, shuffled, (8,))[8], sparse, rtol=1e-12, atol=1e-15)
    reference = random_walk_dense(x.reshape(3, -1), grid_affinity_dense(weights, offsets), 10, 8)
    torch.testing.assert_close(dense, reference.reshape(3, h, w), rtol=0, atol=0)
    # tune's form: one walk keeps every 2^t asked for, each the walk of that many steps
    walks = boundary_walks(maps, edge, 10, (0, 3, 8), radius)
    torch.testing.assert_close(walks[8], sparse, rtol=0, atol=0)
    torch.testing.assert_close(walks[3], boundary_walk(maps, edge, 10, 3, radius), rtol=0, atol=0)
    torch.testing.assert_close(walks[0], boundary_walk(maps, edge, 10, 0, radius), rtol=0, atol=0)  # 2^0 = 1 step
    assert rel_err(walks[0], x) > 1e-3


def test_transition_ignores_weights_of_pairs_off_the_grid():
    offsets = [tuple(d) for d in directions(5).tolist()]
    full = torch.ones(len(offsets), 6, 7, dtype=torch.float64)  # "affinity 1" even off the grid
    ones = torch.ones(6, 7, dtype=torch.float64)
    torch.testing.assert_close(grid_transition(full, offsets, 10).to_dense(),
                               grid_transition(grid_boundary_affinity(0 * ones, 5)[0], offsets, 10).to_dense())
    dense = grid_affinity_dense(full, offsets)
    torch.testing.assert_close(dense, grid_affinity_dense(grid_boundary_affinity(0 * ones, 5)[0], offsets))
    # each cell's stencil in the matrix: itself plus its in-grid neighbours within the radius
    yy, xx = np.mgrid[:6, :7]
    near = (yy.reshape(-1, 1) - yy.reshape(1, -1)) ** 2 + (xx.reshape(-1, 1) - xx.reshape(1, -1)) ** 2 < 25
    np.testing.assert_array_equal(dense.numpy(), near.astype(np.float64))


def test_boundary_walk_stops_at_a_boundary_and_bad_inputs():
    h, w = 12, 16
    edge = torch.zeros(h, w, dtype=torch.float64)
    edge[:, 8] = 1.0  # a full wall between the halves
    cam = torch.zeros(1, h, w, dtype=torch.float64)
    cam[0, 5, 2] = 1.0
    rw = boundary_walk(cam, edge, beta=10, exp_times=6, radius=5)
    assert rw[0, :, 8:].abs().max() == 0 and rw[0, :, :8].min() > 0
    with pytest.raises(ValueError, match="method"):
        boundary_walk(cam, edge, 10, 2, 5, method="magic")
    with pytest.raises(ValueError, match="grid"):
        boundary_walk(cam[:, :5], edge, 10, 2, 5)


def test_semantic_pseudo_label_without_classes_is_background():
    label, rw, rw_up = semantic_pseudo_label(torch.zeros(0, 5, 9), np.zeros(0, np.int64), torch.zeros(5, 9),
                                             (18, 33), 10, 8, 0.25, 5, STRIDE)
    assert label.shape == (18, 33) and (label == 0).all()
    assert rw.shape == (0, 5, 9) and rw_up.shape == (0, 18, 33)


# --- IR labels (label CRF) ----------------------------------------------------------------------


@pytest.mark.parametrize("path", golden_cases("irn_ir_label_*.npz"))
def test_ir_label_golden(path):
    g = np.load(path)
    args = (g["image"], g["keys"], g["cams"])
    for tag, threshold in (("fg", float(g["conf_fg_thres"])), ("bg", float(g["conf_bg_thres"]))):
        positions, refined = ir_label_parts(*args, threshold, CRF_STEPS, GT_PROB, IRN_LABEL_KERNELS)
        np.testing.assert_array_equal(positions, g[f"{tag}_conf_cam"])
        np.testing.assert_array_equal(refined, g[f"{tag}_conf"])
    conf = ir_label(*args, float(g["conf_fg_thres"]), float(g["conf_bg_thres"]), CRF_STEPS, GT_PROB,
                    IRN_LABEL_KERNELS)
    assert conf.dtype == np.uint8
    np.testing.assert_array_equal(conf, g["conf"])


def test_label_crf_and_combination_hand_cases():
    image = np.zeros((8, 10, 3), np.uint8)
    image[:, 5:] = 255
    labels = np.zeros((8, 10), np.int64)
    labels[:, 5:] = 1
    labels[3, 2] = 1  # an isolated wrong label inside a flat region is voted out
    np.testing.assert_array_equal(label_crf(image, labels, 2, CRF_STEPS, GT_PROB, IRN_LABEL_KERNELS)[:, :5], 0)
    assert (label_crf(image, labels, 1, CRF_STEPS, GT_PROB, IRN_LABEL_KERNELS) == 0).all()
    fg = np.array([[0, 3, 0, 5]])
    bg = np.array([[0, 0, 2, 5]])
    np.testing.assert_array_equal(combine_ir_labels(fg, bg), [[0, 3, 255, 5]])


# --- training pair labels -----------------------------------------------------------------------


@pytest.mark.parametrize("path", golden_cases("irn_aff_labels_*.npz"))
def test_aff_labels_golden(path):
    g = np.load(path)
    size, radius = int(g["crop_size"]), int(g["radius"])
    image, label = g["image"], g["ir_label"]
    if "seed" in g.files:  # train_irn's random transforms with the recorded draws
        assert float(g["scale"]) == 0.5 + float(g["scale_draw"])
        image = resize_image(image, float(g["scale"]))
        label = resize_label(label, image.shape[:2])
        normed = irn_normalize(image)
        if bool(g["flip"]):
            normed, label = normed[:, ::-1], label[:, ::-1]
        box = g["crop_box"]
    else:
        normed = irn_normalize(image)
        box = top_left_box(image.shape[:2], size)
    img = canvas_crop(normed, box, size, 0).transpose(2, 0, 1)
    assert img.dtype == np.float32
    np.testing.assert_array_equal(img, g["img"])
    cropped = canvas_crop(label, box, size, 255)
    np.testing.assert_array_equal(cropped, g["label"])

    reduced, bg_pos, fg_pos, neg = ir_pair_labels(g["label"], radius, STRIDE)
    np.testing.assert_array_equal(reduced, g["reduced_label"])
    index = path_index(radius, *reduced.shape)
    np.testing.assert_array_equal(index.src_indices, g["src_indices"])
    np.testing.assert_array_equal(index.dst_indices, g["dst_indices"])
    for name, ours in (("bg_pos", bg_pos), ("fg_pos", fg_pos), ("neg", neg)):
        assert ours.dtype == torch.float32
        np.testing.assert_array_equal(ours.numpy(), g[name], err_msg=name)


def test_pair_labels_treat_only_255_as_ignore():
    label = np.zeros((10, 20), np.uint8)
    label[:, 10:] = 30  # a class index IRN's "< 21" rule would drop
    label[0, 4] = 255
    bg_pos, fg_pos, neg = pair_labels(label, 5)
    index = path_index(5, 10, 20)
    flat = label.reshape(-1).astype(np.int64)
    src, dst = flat[index.src_indices][None], flat[index.dst_indices]
    valid = (src != 255) & (dst != 255)
    np.testing.assert_array_equal(bg_pos.numpy(), valid & (src == dst) & (src == 0))
    np.testing.assert_array_equal(fg_pos.numpy(), valid & (src == dst) & (src == 30))
    np.testing.assert_array_equal(neg.numpy(), valid & (src != dst))
    assert fg_pos.sum() > 0 and neg.sum() > 0
    assert bg_pos[:, 0].sum() == 0 and neg[:, 0].sum() == 0  # source (0, 4) is ignored


def test_canvas_crop_pads_and_crops():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = canvas_crop(array, (1, 4, 0, 3, 0, 3, 1, 4), 5, 255)
    assert out.shape == (5, 5) and (out[0] == 255).all() and (out[:, 3:] == 255).all()
    np.testing.assert_array_equal(out[1:4, :3], array[:, 1:])
    np.testing.assert_array_equal(canvas_crop(array, top_left_box(array.shape, 2), 2, 0), array[:2, :2])


# --- instances ----------------------------------------------------------------------------------


def bfs_components(mask: np.ndarray) -> np.ndarray:
    """4-connected components numbered in raster order of first appearance (reference)."""
    labels = np.zeros(mask.shape, np.int64)
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if labels[y, x]:
            continue
        count += 1
        labels[y, x] = count
        queue = deque([(y, x)])
        while queue:
            cy, cx = queue.popleft()
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = count
                    queue.append((ny, nx))
    return labels


@pytest.mark.parametrize("seed", range(4))
def test_label_components_raster_order(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((23, 31)) < 0.45
    mask[5:15, 3] = mask[14, 3:12] = mask[5:15, 11] = True  # a U whose arms meet late in the scan
    labels, count = label_components(mask)
    reference = bfs_components(mask)
    assert count == reference.max()
    np.testing.assert_array_equal(labels, reference)


@pytest.mark.parametrize("path", golden_cases("irn_ins_seg_*.npz"))
def test_instance_pseudo_labels_golden(path):
    g = np.load(path)
    cams, edge = walk_inputs(g)
    image_hw = g["image"].shape[:2]
    result = instance_pseudo_labels(
        cams, g["keys"], edge, g["dp"], image_hw, beta=float(g["beta"]), exp_times=int(g["exp_times"]),
        radius=int(g["radius"]), stride=STRIDE, bg_threshold=float(g["ins_seg_bg_thres"]),
        centroid_iterations=CENTROID_STEPS, weak_threshold=WEAK_DISPLACEMENT, min_area_fraction=MIN_AREA_FRACTION)
    assert result.centroids.dtype == np.int32
    np.testing.assert_array_equal(result.centroids, g["centroids"])
    np.testing.assert_array_equal(result.instance_map, g["instance_map"])
    assert rel_err(result.instance_cam, g["instance_cam"]) == 0
    assert rel_err(result.rw, g["rw"][:, 0]) <= 1e-3
    assert rel_err(result.rw_up, g["rw_up"]) <= 1e-3
    assert result.instance_shape.shape == g["instance_shape"].shape
    assert (result.instance_shape == g["instance_shape"]).mean() >= 0.999
    np.testing.assert_array_equal(result.class_ids, g["instance_class_id"])
    det = result.detections
    assert len(det.scores) == len(g["det_score"]) and det.scores.dtype == np.float32
    np.testing.assert_array_equal(det.classes, g["det_class"])
    assert (det.masks == g["det_mask"]).mean() >= 0.999
    np.testing.assert_allclose(det.scores, g["det_score"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("path", golden_cases("irn_ins_seg_*.npz"))
def test_instance_steps_golden(path):
    """Each step from the stored input of that step."""
    g = np.load(path)
    np.testing.assert_array_equal(find_centroids(g["dp"], CENTROID_STEPS), g["centroids"])
    np.testing.assert_array_equal(instance_map(g["centroids"], g["dp"], WEAK_DISPLACEMENT), g["instance_map"])
    image_hw = g["image"].shape[:2]
    assert rel_err(upsample_walk(torch.from_numpy(g["rw"][:, 0]), image_hw, STRIDE), g["rw_up"]) <= 1e-6
    shapes = instance_shapes(g["rw_up"], float(g["ins_seg_bg_thres"]))
    np.testing.assert_array_equal(shapes, g["instance_shape"])
    det = detect_instances(g["rw_up"], g["instance_shape"], g["instance_class_id"],
                           image_hw[0] * image_hw[1] * MIN_AREA_FRACTION)
    np.testing.assert_array_equal(det.masks, g["det_mask"])
    np.testing.assert_array_equal(det.classes, g["det_class"])
    np.testing.assert_array_equal(det.scores, g["det_score"])


def test_centroids_and_small_fragments_hand_case():
    h, w = 9, 11
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    dp = np.stack([4 - yy, 5 - xx]).astype(np.float32)  # everything points at (4, 5)
    centroids = find_centroids(dp, 50)
    assert (centroids[0] == 4).all() and (centroids[1] == 5).all()
    inst = instance_map(centroids, dp, 2.5)
    assert inst.shape == (1, h, w) and inst.all()
    shapes = np.zeros((1, 20, 20), bool)
    shapes[0, :10, :10] = True   # 100 px
    shapes[0, 15:, 15:] = True   # 25 px: below 10 % of 400
    scores = np.full((1, 20, 20), 0.5, np.float32)
    scores[0, 16, 16] = 0.9
    det = detect_instances(scores, shapes, np.array([3]), min_area=40)
    np.testing.assert_array_equal(det.scores, [0.5, 0.0])
    np.testing.assert_array_equal(det.classes, [3, 3])
    empty = detect_instances(scores, np.zeros_like(shapes), np.array([3]), 40)
    assert empty.masks.shape == (0, 20, 20) and empty.scores.shape == (0,)


# --- mask AP (chainercv's eval_instance_segmentation_voc, as IRN evaluates) -----------------------


def boxes(shape, *rects):
    out = np.zeros((len(rects),) + shape, bool)
    for m, (y0, y1, x0, x1) in zip(out, rects):
        m[y0:y1, x0:x1] = True
    return out


def test_mask_iou_hand_cases():
    a = boxes((4, 4), (0, 2, 0, 2), (0, 4, 0, 4))
    b = boxes((4, 4), (0, 2, 0, 4), (2, 4, 2, 4))
    np.testing.assert_allclose(mask_iou(a, b), [[0.5, 0.0], [0.5, 0.25]])
    assert mask_iou(np.zeros((1, 2, 2), bool), np.zeros((1, 2, 2), bool))[0, 0] == 0


def test_voc_average_precision_hand_cases():
    assert voc_average_precision([1.0], [1.0]) == 1.0
    assert voc_average_precision([], []) == 0.0
    # precision 1, 0.5, 2/3 at recall 0.5, 0.5, 1: envelope 1 then 2/3
    assert voc_average_precision([1, 0.5, 2 / 3], [0.5, 0.5, 1]) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_instance_ap_hand_cases():
    shape = (10, 10)
    gt = boxes(shape, (0, 5, 0, 5), (5, 10, 5, 10))
    gt_labels = np.array([2, 2])

    perfect = InstanceAP(4, 0.5)
    perfect.add(gt, gt_labels, np.array([0.9, 0.8]), gt, gt_labels)
    result = perfect.result()
    assert result["map"] == 100.0 and result["per_class"]["2"] == 100.0
    assert np.isnan(result["per_class"]["0"])  # no ground truth: left out of the mean

    # a duplicate of the first instance, scored between the two true ones, is a false positive
    dup = InstanceAP(4, 0.5)
    dup.add(np.concatenate([gt[:1], gt[:1], gt[1:]]), np.array([2, 2, 2]), np.array([0.9, 0.8, 0.7]), gt, gt_labels)
    assert dup.result()["map"] == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))

    # a duplicate does not fall back to the second-best instance, even above the threshold
    wide = boxes(shape, (0, 10, 0, 5))                     # IoU 0.5 with A, 0.2 with B
    gt_ab = boxes(shape, (0, 5, 0, 5), (5, 10, 0, 5))      # A and B stacked: wide's IoU 0.5 with each
    fallback = InstanceAP(3, 0.5)
    fallback.add(np.concatenate([gt_ab[:1], wide]), np.array([1, 1]), np.array([0.9, 0.8]), gt_ab, np.array([1, 1]))
    assert fallback.result()["map"] == pytest.approx(50.0)  # recall stays 1/2

    # IoU exactly at the threshold matches; below it does not
    at = InstanceAP(3, 0.5)
    at.add(boxes(shape, (0, 10, 0, 5)), np.array([0]), np.array([1.0]), boxes(shape, (0, 5, 0, 5)), np.array([0]))
    assert at.result()["map"] == 100.0
    below = InstanceAP(3, 0.6)
    below.add(boxes(shape, (0, 10, 0, 5)), np.array([0]), np.array([1.0]), boxes(shape, (0, 5, 0, 5)), np.array([0]))
    assert below.result()["map"] == 0.0

    # wrong class: a miss in the true class (AP 0), its own class has no ground truth (NaN)
    wrong = InstanceAP(3, 0.5)
    wrong.add(gt[:1], np.array([1]), np.array([0.9]), gt[:1], np.array([0]))
    per_class = wrong.result()["per_class"]
    assert per_class["0"] == 0.0 and np.isnan(per_class["1"]) and wrong.result()["map"] == 0.0


def test_instance_ap_sorts_over_images():
    shape = (6, 6)
    gt = boxes(shape, (0, 3, 0, 3))
    miss = boxes(shape, (3, 6, 3, 6))
    ap = InstanceAP(1, 0.5)
    ap.add(miss, np.array([0]), np.array([0.95]), gt, np.array([0]))  # image 1: a confident false positive
    ap.add(gt, np.array([0]), np.array([0.5]), gt, np.array([0]))     # image 2: a true positive
    # by score: FP, TP -> precision 0, 0.5 at recall 0, 0.5 -> AP = 0.5 * 0.5
    assert ap.result()["map"] == pytest.approx(25.0)
    assert ap.result(["only"])["per_class"] == {"only": pytest.approx(25.0)}
    with pytest.raises(ValueError, match="class index"):
        ap.add(gt, np.array([1]), np.array([0.5]), gt, np.array([0]))


def test_voc_instances():
    cls = np.zeros((6, 6), np.uint8)
    obj = np.zeros((6, 6), np.uint8)
    cls[0:2, 0:2], obj[0:2, 0:2] = 15, 2
    cls[3:6, 3:6], obj[3:6, 3:6] = 9, 1
    cls[2, :], obj[2, :] = 255, 255  # boundary / difficult: in no instance
    masks, labels = voc_instances(cls, obj)
    np.testing.assert_array_equal(labels, [8, 14])
    np.testing.assert_array_equal(masks[0], obj == 1)
    np.testing.assert_array_equal(masks[1], obj == 2)
    assert masks.dtype == bool and not masks[:, 2].any()
