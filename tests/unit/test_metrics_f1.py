"""F1 / AP at IoU thresholds and the overlap matcher, on hand-made label images.

Scene used throughout: three 4x4 squares (16 px each) on a 12x16 canvas,
ids 1 (rows 0-3, cols 0-3), 2 (rows 0-3, cols 4-7, touching 1), 3 (rows 6-9, cols 8-11).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cellsam.metrics import (
    DEFAULT_THRESHOLDS,
    F1Accumulator,
    MatchCounts,
    assign_one_to_one,
    compute_overlaps,
    evaluate_f1,
    f1_score,
    iou_matrix,
    match_counts,
    match_pairs,
)


def paint(*rects: tuple[int, int, int, int, int], shape=(12, 16)) -> np.ndarray:
    """Label image from (id, y0, y1, x0, x1) rectangles, later ones on top."""
    lab = np.zeros(shape, np.int64)
    for i, y0, y1, x0, x1 in rects:
        lab[y0:y1, x0:x1] = i
    return lab


SQ1, SQ2, SQ3 = (1, 0, 4, 0, 4), (2, 0, 4, 4, 8), (3, 6, 10, 8, 12)
TRUE = paint(SQ1, SQ2, SQ3)


def counts_at(y_true, y_pred, t=0.5) -> tuple[int, int, int]:
    c = match_counts(y_true, y_pred, (t,))[0]
    return c.tp, c.fp, c.fn


def test_perfect_match_all_thresholds():
    pred = TRUE * 7 + 100 * (TRUE > 0)  # other ids, same objects
    for c in match_counts(TRUE, pred, DEFAULT_THRESHOLDS):
        assert (c.tp, c.fp, c.fn) == (3, 0, 0)
        assert c.f1 == 1.0 and c.ap == 1.0 and c.precision == 1.0 and c.recall == 1.0


def test_one_missed_cell():
    pred = paint(SQ1, SQ3)
    assert counts_at(TRUE, pred) == (2, 0, 1)
    c = match_counts(TRUE, pred)[0]
    assert c.f1 == pytest.approx(2 / 2.5)  # TP / (TP + 0.5 (FP + FN))
    assert c.ap == pytest.approx(2 / 3)
    assert c.recall == pytest.approx(2 / 3) and c.precision == 1.0


def test_one_false_cell():
    pred = paint(SQ1, SQ2, SQ3, (9, 8, 12, 0, 4))
    assert counts_at(TRUE, pred) == (3, 1, 0)
    assert f1_score(TRUE, pred) == pytest.approx(3 / 3.5)
    assert match_counts(TRUE, pred)[0].ap == pytest.approx(3 / 4)


def test_split_into_equal_halves_counts_at_exactly_half():
    # Square 3 cut into two 2x4 halves: each half has IoU 8/16 = 0.5 exactly.
    pred = paint(SQ1, SQ2, (3, 6, 8, 8, 12), (4, 8, 10, 8, 12))
    assert counts_at(TRUE, pred, 0.5) == (3, 1, 0)  # one half matches (IoU >= 0.5)
    assert counts_at(TRUE, pred, 0.55) == (2, 2, 1)


def test_uneven_split():
    # 3 columns (IoU 12/16) + 1 column (IoU 4/16) of square 3.
    pred = paint(SQ1, SQ2, (3, 6, 10, 8, 11), (4, 6, 10, 11, 12))
    assert counts_at(TRUE, pred, 0.5) == (3, 1, 0)
    assert counts_at(TRUE, pred, 0.75) == (3, 1, 0)
    assert counts_at(TRUE, pred, 0.8) == (2, 2, 1)


def test_merge_of_two_touching_cells():
    # Squares 1 and 2 merged: IoU 16/32 = 0.5 with each; only one can be matched.
    pred = paint((5, 0, 4, 0, 8), SQ3)
    assert counts_at(TRUE, pred, 0.5) == (2, 0, 1)
    assert counts_at(TRUE, pred, 0.55) == (1, 1, 2)


def test_empty_truth_empty_prediction_both_empty():
    empty = np.zeros_like(TRUE)
    c = match_counts(empty, TRUE)[0]
    assert (c.tp, c.fp, c.fn, c.f1, c.precision, c.recall) == (0, 3, 0, 0.0, 0.0, 0.0)
    c = match_counts(TRUE, empty)[0]
    assert (c.tp, c.fp, c.fn, c.f1, c.precision, c.recall) == (0, 0, 3, 0.0, 0.0, 0.0)
    # Both empty: F1 is 0/0, which the REFERENCE convention counts as 0.
    c = match_counts(empty, empty)[0]
    assert (c.tp, c.fp, c.fn, c.f1, c.ap) == (0, 0, 0, 0.0, 0.0)


def test_aggregation_mean_and_pooled():
    empty = np.zeros_like(TRUE)
    trues = [TRUE, TRUE, empty]
    preds = [TRUE, paint(SQ1, SQ3), empty]  # F1 = 1, 0.8, 0 (both empty)
    out = evaluate_f1(trues, preds, thresholds=(0.5,))
    assert out["n_images"] == 3 and out["n_true"] == 6 and out["n_pred"] == 5
    assert out["f1_mean@0.50"] == pytest.approx((1 + 0.8 + 0) / 3)
    assert (out["tp@0.50"], out["fp@0.50"], out["fn@0.50"]) == (5, 0, 1)
    assert out["f1_pooled@0.50"] == pytest.approx(5 / 5.5)
    assert out["ap_pooled@0.50"] == pytest.approx(5 / 6)
    assert out["ap_mean@0.50"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_accumulator_state_sums_like_an_all_reduce():
    thr = (0.5, 0.75)
    pairs = [(TRUE, TRUE), (TRUE, paint(SQ1, SQ3)), (TRUE, paint((5, 0, 4, 0, 8), SQ3))]
    full = F1Accumulator(thr)
    for t, p in pairs:
        full.update(t, p)
    a, b = F1Accumulator(thr), F1Accumulator(thr)
    a.update(*pairs[0])
    for t, p in pairs[1:]:
        b.update(t, p)
    merged = F1Accumulator.from_vector(a.to_vector() + b.to_vector(), thr)
    assert merged.compute() == full.compute()
    assert (a + b).compute() == full.compute()
    total = match_counts(*pairs[1], (0.5,))[0] + match_counts(*pairs[2], (0.5,))[0]
    assert isinstance(total, MatchCounts)
    assert (total.tp, total.fp, total.fn) == (4, 0, 2)


def test_ids_dtype_and_order_do_not_matter():
    pred = paint(SQ1, SQ2, (3, 6, 10, 8, 11))
    ref = [c.tp for c in match_counts(TRUE, pred, DEFAULT_THRESHOLDS)]
    relab_t = np.where(TRUE > 0, 1000 - TRUE * 3, 0).astype(np.uint16)
    relab_p = np.where(pred > 0, 2**40 + pred, 0)  # huge ids: the sort-based relabel path
    assert [c.tp for c in match_counts(relab_t, relab_p, DEFAULT_THRESHOLDS)] == ref
    iou, tid, pid = iou_matrix(relab_t, relab_p)
    assert list(tid) == [991, 994, 997] and list(pid) == [2**40 + 1, 2**40 + 2, 2**40 + 3]
    assert iou[0, 2] == pytest.approx(12 / 16)  # true 3 (id 991) vs pred 3


def _brute_overlaps(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Dense IoU by one mask per object: the slow, obvious way."""
    tid, pid = np.unique(t[t > 0]), np.unique(p[p > 0])
    out = np.zeros((tid.size, pid.size))
    for i, a in enumerate(tid):
        for j, b in enumerate(pid):
            inter = np.sum((t == a) & (p == b))
            out[i, j] = inter / np.sum((t == a) | (p == b))
    return out


def _brute_max_matching(iou: np.ndarray, thr: float) -> int:
    """Largest number of disjoint pairs with IoU >= thr, by enumeration."""
    n_t, n_p = iou.shape
    best = 0
    for k in range(min(n_t, n_p), 0, -1):
        for rows in itertools.combinations(range(n_t), k):
            for cols in itertools.permutations(range(n_p), k):
                if all(iou[r, c] >= thr for r, c in zip(rows, cols)):
                    return k
    return best


def test_overlaps_and_matching_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = rng.integers(4, 14, size=2)
        t = np.zeros((h, w), np.int64)
        p = np.zeros((h, w), np.int64)
        for lab, n in ((t, rng.integers(0, 6)), (p, rng.integers(0, 6))):
            for i in range(1, n + 1):
                y, x = rng.integers(0, h), rng.integers(0, w)
                lab[y : y + rng.integers(1, 6), x : x + rng.integers(1, 6)] = i * 5
        ov = compute_overlaps(t, p)
        dense = _brute_overlaps(t, p)
        np.testing.assert_allclose(ov.iou_matrix(), dense)
        assert ov.true_areas.sum() == np.count_nonzero(t)
        assert ov.pred_areas.sum() == np.count_nonzero(p)
        for thr in (0.1, 0.3, 0.5, 0.7):
            k = _brute_max_matching(dense, thr)
            rows, cols = match_pairs(ov, thr)
            assert rows.size == k
            assert len(set(rows)) == k and len(set(cols)) == k
            assert np.all(dense[rows, cols] >= thr)
            assert assign_one_to_one(dense, thr)[0].size == k


def test_overlaps_with_thousands_of_objects_use_the_sparse_path():
    # 60x60 image where every pixel is its own object (3600 ids), prediction shifted by
    # one column: too many pairs for a dense histogram, so the sparse path runs.
    t = np.arange(1, 3601).reshape(60, 60)
    p = np.roll(t, 1, axis=1) * 3
    ov = compute_overlaps(t, p)
    assert ov.n_true == ov.n_pred == 3600 and ov.rows.size == 3600
    assert np.all(ov.intersections == 1) and np.all(ov.iou == 1.0)
    # true pixel (r, c) holds id 60 r + c + 1; the pred there is the true id one column left
    expect = (np.arange(3600) // 60) * 60 + (np.arange(3600) % 60 - 1) % 60
    np.testing.assert_array_equal(ov.pred_ids[ov.cols], 3 * (expect + 1))
    assert match_counts(t, p, (1.0,))[0].tp == 3600


def test_assignment_count_first_versus_max_iou():
    # Max total IoU pairs (0,1)+(1,0) = 0.75 > 0.5, leaving no pair >= 0.5;
    # the Cellpose cost keeps (0,0) at 0.5 instead.
    iou = np.array([[0.5, 0.45], [0.3, 0.0]])
    rows, cols = assign_one_to_one(iou, 0.5)
    assert list(zip(rows, cols)) == [(0, 0)]
    assert assign_one_to_one(iou, 0.5, count_first=False)[0].size == 0
    assert assign_one_to_one(np.zeros((0, 3)), 0.5)[0].size == 0


def test_max_iou_assignment_against_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(40):
        iou = rng.random((rng.integers(1, 5), rng.integers(1, 5))) * (rng.random() < 0.8)
        rows, cols = assign_one_to_one(iou, 0.0, count_first=False)
        best = max(
            sum(iou[r, c] for r, c in zip(rs, cs))
            for k in [min(iou.shape)]
            for rs in itertools.combinations(range(iou.shape[0]), k)
            for cs in itertools.permutations(range(iou.shape[1]), k)
        )
        assert iou[rows, cols].sum() == pytest.approx(best)


def test_rejects_bad_input_and_accepts_any_int_dtype():
    for dt in (np.uint8, np.int16, np.uint32, np.int64, np.uint64):
        assert counts_at(TRUE.astype(dt), paint(SQ1, SQ3).astype(dt)) == (2, 0, 1)
    with pytest.raises(ValueError):
        match_counts(TRUE, TRUE, (0.0,))
    with pytest.raises(ValueError):
        compute_overlaps(TRUE, TRUE[:-1])
    with pytest.raises(ValueError):
        compute_overlaps(TRUE, -TRUE)
