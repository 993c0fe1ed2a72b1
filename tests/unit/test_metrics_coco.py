"""COCO mask / box mAP with many detections per image, two backends.

Hand-counted values use COCO's 101 recall points r = 0.00, 0.01, ..., 1.00 and its
interpolated precision (the best precision at any recall >= r):
- all n ground truths found, no false positive: AP = 1;
- k of n found, no false positive: AP = #{r <= k/n} / 101 (higher recalls get 0);
- all n found plus ONE false positive scored above all of them: every recall point
  takes the final precision n / (n + 1); scored below all of them: AP stays 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from cellsam.metrics import (
    ImageDetections,
    coco_gt_from_labels,
    detections_from_label,
    evaluate_coco,
    label_to_rles,
)

BACKENDS = ("faster", "pycocotools")
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def paint(*rects, shape=(12, 16)) -> np.ndarray:
    lab = np.zeros(shape, np.int64)
    for i, y0, y1, x0, x1 in rects:
        lab[y0:y1, x0:x1] = i
    return lab


SQ1, SQ2, SQ3 = (1, 0, 4, 0, 4), (2, 0, 4, 4, 8), (3, 6, 10, 8, 12)
TRUE = paint(SQ1, SQ2, SQ3)


def ap_found(k: int, n: int) -> float:
    return float(np.sum(RECALL_POINTS <= k / n + 1e-12)) / 101


def grid_scene(n_side: int, rng: np.random.Generator, cell: int = 5, pitch: int = 8):
    """n_side^2 separated 5x5 cells; a prediction with per-cell shifts, some deleted."""
    size = n_side * pitch
    t = np.zeros((size, size), np.int64)
    p = np.zeros_like(t)
    k = 0
    for gy in range(n_side):
        for gx in range(n_side):
            k += 1
            y, x = gy * pitch + 1, gx * pitch + 1
            t[y : y + cell, x : x + cell] = k
            if rng.random() < 0.1:
                continue  # missed
            dy, dx = rng.integers(-1, 2, size=2)
            p[y + dy : y + dy + cell, x + dx : x + dx + cell] = k
    scores = rng.permutation(np.unique(p[p > 0]).size) / 1000.0 + 0.1  # distinct
    return t, p, scores


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_counted_values(backend):
    sc3 = [0.9, 0.8, 0.7]
    perfect = evaluate_coco([TRUE], [(TRUE, sc3)], backend=backend)
    assert perfect == {k: 1.0 for k in perfect} and len(perfect) == 6
    missed = evaluate_coco([TRUE], [(paint(SQ1, SQ3), [0.9, 0.8])], backend=backend)
    assert missed["segm_mAP"] == pytest.approx(67 / 101) == pytest.approx(ap_found(2, 3))
    assert missed["bbox_AP50"] == pytest.approx(67 / 101)
    extra = paint(SQ1, SQ2, SQ3, (4, 8, 12, 0, 4))
    top = evaluate_coco([TRUE], [(extra, [0.5, 0.4, 0.3, 0.99])], backend=backend)
    assert top["segm_mAP"] == pytest.approx(3 / 4) and top["bbox_AP75"] == pytest.approx(3 / 4)
    low = evaluate_coco([TRUE], [(extra, [0.5, 0.4, 0.3, 0.01])], backend=backend)
    assert low["segm_mAP"] == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_and_merge_hand_counted(backend):
    # Square 3 cut in halves (IoU 0.5 each): matched at IoU 0.50 only, one extra FP.
    split = paint(SQ1, SQ2, (3, 6, 8, 8, 12), (4, 8, 10, 8, 12))
    out = evaluate_coco([TRUE], [(split, [0.9, 0.8, 0.7, 0.6])], iou_types=("segm",),
                        backend=backend)
    # IoU 0.50: all 3 found by the first 3 detections -> 1; 0.55..0.95: 2 of 3 -> 67/101.
    assert out["segm_AP50"] == 1.0
    assert out["segm_mAP"] == pytest.approx((1 + 9 * 67 / 101) / 10)
    merged = paint((5, 0, 4, 0, 8), SQ3)
    out = evaluate_coco([TRUE], [(merged, [0.9, 0.8])], iou_types=("segm",), backend=backend)
    assert out["segm_AP50"] == pytest.approx(67 / 101)  # merge matches one of the two
    assert out["segm_mAP"] == pytest.approx((67 / 101 + 9 * 34 / 101) / 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_cases(backend):
    empty = np.zeros_like(TRUE)
    out = evaluate_coco([TRUE], [(empty, [])], backend=backend)
    assert out == {k: 0.0 for k in out}
    out = evaluate_coco([empty], [(TRUE, [0.9, 0.8, 0.7])], backend=backend)
    assert all(math.isnan(v) for v in out.values())
    out = evaluate_coco([empty], [(empty, [])], backend=backend)
    assert all(math.isnan(v) for v in out.values())
    # An image without ground truth still contributes its false positives...
    out = evaluate_coco([TRUE, empty], [(TRUE, [0.5, 0.4, 0.3]), (TRUE, [0.9, 0.2, 0.1])],
                        backend=backend)
    # ranked: FP 0.9, TP .5 .4 .3, FP .2 .1 -> final-precision envelope 3/4 at all recalls
    assert out["segm_mAP"] == pytest.approx(3 / 4)
    # ...and an image with neither is ignored.
    out = evaluate_coco([TRUE, empty], [(TRUE, [0.5, 0.4, 0.3]), (empty, [])], backend=backend)
    assert out["segm_mAP"] == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_cells_not_capped_and_split_over_two_images(backend):
    rng = np.random.default_rng(0)
    t, p, scores = grid_scene(16, rng)  # 256 cells in one image
    assert np.unique(t[t > 0]).size == 256
    one = evaluate_coco([t], [(p, scores)], backend=backend)
    perfect = evaluate_coco([t], [(t, np.linspace(1, 0.5, 256))], backend=backend)
    assert perfect["segm_mAP"] == 1.0 and perfect["bbox_mAP"] == 1.0  # no cap at 100
    capped = evaluate_coco([t], [(t, np.linspace(1, 0.5, 256))], backend=backend, max_dets=100)
    assert capped["segm_mAP"] == pytest.approx(ap_found(100, 256))
    # Same cells cut into a left and a right image (no cell crosses the cut).
    half = t.shape[1] // 2
    ids_p = np.unique(p[p > 0])
    score_of = dict(zip(ids_p.tolist(), scores.tolist()))
    parts_t = [t[:, :half], t[:, half:]]
    parts_p = [p[:, :half], p[:, half:]]
    dets = [(pp, {i: score_of[i] for i in np.unique(pp[pp > 0]).tolist()}) for pp in parts_p]
    two = evaluate_coco(parts_t, dets, backend=backend)
    assert one.keys() == two.keys()
    for k in one:
        assert two[k] == pytest.approx(one[k], abs=1e-12)
    assert 0.05 < one["segm_mAP"] < 0.9  # shifted cells: a real spread of IoUs


def test_backends_agree_with_overlapping_rle_detections():
    rng = np.random.default_rng(3)
    trues, dets = [], []
    for img in range(4):
        t, p, _ = grid_scene(12, rng)  # 144 cells
        if img == 3:
            t = np.zeros_like(t)  # an image with detections but no ground truth
        rles, ids, _, _ = label_to_rles(p)
        # extra overlapping detections: each cell's box grown by one pixel
        grown = []
        for rle in rles[::3]:
            x, y, w, h = mask_utils.toBbox(rle)
            m = np.zeros(t.shape, np.uint8)
            m[max(0, int(y) - 1) : int(y + h) + 1, max(0, int(x) - 1) : int(x + w) + 1] = 1
            grown.append(mask_utils.encode(np.asfortranarray(m)))  # bytes counts
        all_rles = rles + grown
        scores = rng.permutation(len(all_rles)) / len(all_rles) + 1e-3
        trues.append(t)
        dets.append(ImageDetections(all_rles, scores))
    trues.append(np.zeros_like(trues[0]))
    dets.append(ImageDetections([], np.zeros(0)))
    a = evaluate_coco(trues, dets, backend="faster")
    b = evaluate_coco(trues, dets, backend="pycocotools")
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-6)
    assert 0.02 < a["segm_mAP"] < 0.9


def test_explicit_boxes_and_prebuilt_gt_dict():
    gt = coco_gt_from_labels([TRUE])
    assert [a["bbox"] for a in gt["annotations"]] == [
        [0.0, 0.0, 4.0, 4.0], [4.0, 0.0, 4.0, 4.0], [8.0, 6.0, 4.0, 4.0]]
    det = detections_from_label(TRUE, {1: 0.9, 2: 0.8, 3: 0.7})
    np.testing.assert_array_equal(det.boxes_xyxy[2], [8, 6, 12, 10])
    out = evaluate_coco(gt, {1: det})
    assert out["segm_mAP"] == 1.0 and out["bbox_mAP"] == 1.0
    # Boxes shifted by 2 px (IoU 8/24): box AP drops to 0, masks are untouched.
    moved = ImageDetections(det.rles, det.scores, det.boxes_xyxy + [2, 0, 2, 0])
    out = evaluate_coco(gt, [moved], backend="pycocotools")
    assert out["segm_mAP"] == 1.0 and out["bbox_mAP"] == 0.0
    with pytest.raises(ValueError):
        evaluate_coco(gt, {7: det})
    with pytest.raises(ValueError):
        detections_from_label(TRUE, [0.5])


def test_label_to_rles_matches_per_object_encoding():
    rng = np.random.default_rng(5)
    lab = np.zeros((23, 17), np.int64)
    for i in range(1, 25):
        y, x = rng.integers(0, 23), rng.integers(0, 17)
        lab[y : y + rng.integers(1, 8), x : x + rng.integers(1, 8)] = 3 * i + 1
    rles, ids, boxes, areas = label_to_rles(lab)
    assert list(ids) == sorted(np.unique(lab[lab > 0]).tolist())
    for rle, i, box in zip(rles, ids, boxes):
        ref = mask_utils.encode(np.asfortranarray((lab == i).astype(np.uint8)))
        assert rle["counts"] == ref["counts"].decode() and rle["size"] == [23, 17]
        np.testing.assert_array_equal(box, mask_utils.toBbox(ref))
    np.testing.assert_array_equal(areas, [np.sum(lab == i) for i in ids])
    assert label_to_rles(np.zeros((4, 4), np.int64))[0] == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_box_sets(backend):
    from cellsam.metrics import evaluate_box_sets

    gt = [np.array([[0, 0, 4, 4], [4, 0, 8, 4], [8, 6, 12, 10]], float), np.zeros((0, 4))]
    perfect = evaluate_box_sets(gt, [gt[0], np.zeros((0, 4))], [[0.9, 0.8, 0.7], []],
                                backend=backend)
    assert perfect == {"bbox_mAP": 1.0, "bbox_AP50": 1.0, "bbox_AP75": 1.0}
    # Two found + a false box with the top score in the image without ground truth.
    out = evaluate_box_sets(gt, [gt[0][:2], np.array([[20.0, 20, 24, 24]])],
                            [[0.5, 0.4], [0.9]], backend=backend)
    # ranked FP, TP, TP: precision 1/2 then 2/3 -> envelope 2/3 up to recall 2/3
    assert out["bbox_mAP"] == pytest.approx(67 / 101 * 2 / 3)
    empty = evaluate_box_sets([np.zeros((0, 4))], [gt[0]], [[0.9, 0.8, 0.7]], backend=backend)
    assert math.isnan(empty["bbox_mAP"])
    many = [np.array([[x, y, x + 5, y + 5] for x in range(0, 160, 8) for y in range(0, 96, 8)],
                     float)]  # 240 boxes in one image
    assert evaluate_box_sets(many, many, [np.linspace(1, 0.5, 240)],
                             backend=backend)["bbox_mAP"] == 1.0
