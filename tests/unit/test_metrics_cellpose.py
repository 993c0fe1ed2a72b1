"""Cellpose AP at IoU 0.50..0.95 and Cellpose's AJI: hand-counted cases, and equality
with `cellpose.metrics.average_precision` / `cellpose.metrics.aggregated_jaccard_index`
(package `cellpose`, the `refs` extra) on real DSB labels and perturbed copies.

Scene: three 4x4 squares on a 12x16 canvas, ids 1 (rows 0-3, cols 0-3), 2 (rows 0-3,
cols 4-7, touching 1), 3 (rows 6-9, cols 8-11).
"""

from __future__ import annotations

import numpy as np
import pytest
from real_label_cases import EMPTY, N_IMAGES, PERTURBATIONS, PRED, TRUE, paint, real_pairs

from cellsam.metrics import (
    DEFAULT_THRESHOLDS,
    MSA_THRESHOLDS,
    aggregated_jaccard_index,
    cellpose_ap,
)

# ---------------------------------------------------------------- hand-counted cases


def test_ap_hand_counted():
    r = cellpose_ap(TRUE, PRED)
    assert (r.n_true, r.n_pred) == (3, 3)
    # IoU 0.6 counts at the rounded threshold 0.60, not at 0.65 and above.
    assert r.tp.tolist() == [2, 2, 2] + [1] * 7
    assert r.fp.tolist() == [1, 1, 1] + [2] * 7
    assert r.fn.tolist() == [1, 1, 1] + [2] * 7
    np.testing.assert_array_equal(r.ap, [2 / 4] * 3 + [1 / 5] * 7)
    d = r.as_dict()
    assert d["ap@0.50"] == 0.5 and d["tp@0.95"] == 1 and d["fn@0.60"] == 1


def test_ap_threshold_floats_matter():
    # np.arange's third value is 0.6000000000000001 > 12 / 20: the pair no longer counts.
    r = cellpose_ap(TRUE, PRED, thresholds=MSA_THRESHOLDS[:3])
    assert r.tp.tolist() == [2, 2, 1]


def test_ap_empty_cases():
    r = cellpose_ap(TRUE, EMPTY)
    assert r.tp.tolist() == [0] * 10 and r.fn.tolist() == [3] * 10 and r.fp.tolist() == [0] * 10
    np.testing.assert_array_equal(r.ap, np.zeros(10))
    r = cellpose_ap(EMPTY, PRED)
    assert r.fp.tolist() == [3] * 10 and r.fn.tolist() == [0] * 10
    np.testing.assert_array_equal(r.ap, np.zeros(10))
    r = cellpose_ap(EMPTY, EMPTY)
    assert (r.n_true, r.n_pred) == (0, 0) and r.tp.tolist() == [0] * 10
    assert np.isnan(r.ap).all()  # 0 / 0, as Cellpose
    np.testing.assert_array_equal(cellpose_ap(EMPTY, EMPTY, undefined=0.0).ap, np.zeros(10))


def test_aji_hand_counted():
    # Pairs (1, 5) and (2, 9): 16 + 12 shared px. Union of both foregrounds:
    # 48 true + 41 predicted - 28 shared = 61.
    assert aggregated_jaccard_index(TRUE, PRED) == 28 / 61
    assert aggregated_jaccard_index(TRUE, TRUE * 3) == 1.0


def test_aji_counts_pairs_under_half():
    # Cellpose's AJI sums the intersections of ALL assigned pairs, not only IoU >= 0.5.
    t = paint((1, 0, 4, 0, 4), (2, 0, 4, 4, 8))
    # P (rows 0-3, cols 3-5): 4 px in 1 (IoU 4/24), 8 px in 2 (IoU 8/20);
    # Q (rows 0-1, cols 0-2): 6 px in 1 (IoU 6/16). Best total IoU: 1-Q, 2-P.
    p = paint((7, 0, 4, 3, 6), (8, 0, 2, 0, 3))
    assert cellpose_ap(t, p).tp[0] == 0
    assert aggregated_jaccard_index(t, p) == (6 + 8) / 32


def test_aji_exact_half_tie():
    # Object 1 cut into two halves, both at IoU exactly 0.5: one is assigned.
    t = paint((1, 0, 4, 0, 4))
    p = paint((2, 0, 4, 0, 2), (3, 0, 4, 2, 4))
    assert cellpose_ap(t, p).tp[0] == 1
    assert aggregated_jaccard_index(t, p) == 8 / 16


def test_aji_empty_cases():
    assert aggregated_jaccard_index(TRUE, EMPTY) == 0.0
    assert aggregated_jaccard_index(EMPTY, PRED) == 0.0
    assert np.isnan(aggregated_jaccard_index(EMPTY, EMPTY))
    assert aggregated_jaccard_index(EMPTY, EMPTY, undefined=0.0) == 0.0


# ---------------------------------------------------------------- against Cellpose


def _check_against_cellpose(cpm, y_true, y_pred, thresholds=DEFAULT_THRESHOLDS) -> None:
    ours = cellpose_ap(y_true, y_pred, thresholds)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap, tp, fp, fn = cpm.average_precision(y_true, y_pred, list(thresholds))
    np.testing.assert_array_equal(ours.tp, tp)
    np.testing.assert_array_equal(ours.fp, fp)
    np.testing.assert_array_equal(ours.fn, fn)
    # Cellpose stores AP as float32: ours rounds to it exactly, and equals the float64
    # ratio of its counts.
    np.testing.assert_array_equal(ours.ap.astype(np.float32), ap)
    with np.errstate(invalid="ignore"):
        ref64 = tp.astype(np.float64) / (tp.astype(np.float64) + fp + fn)
    np.testing.assert_allclose(ours.ap, ref64, rtol=0, atol=1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref_aji = cpm.aggregated_jaccard_index([y_true], [y_pred])[0]
    ours_aji = aggregated_jaccard_index(y_true, y_pred)
    if np.isnan(ref_aji):
        assert np.isnan(ours_aji)
    else:
        assert abs(ours_aji - ref_aji) <= 1e-12, (ours_aji, ref_aji)


def test_hand_cases_against_cellpose():
    cpm = pytest.importorskip("cellpose.metrics")
    for t, p in [(TRUE, PRED), (TRUE, EMPTY), (EMPTY, PRED), (EMPTY, EMPTY),
                 (paint((1, 0, 4, 0, 4), (2, 0, 4, 4, 8)), paint((7, 0, 4, 3, 6), (8, 0, 2, 0, 3))),
                 (paint((1, 0, 4, 0, 4)), paint((2, 0, 4, 0, 2), (3, 0, 4, 2, 4)))]:
        _check_against_cellpose(cpm, t, p)
        _check_against_cellpose(cpm, t, p, MSA_THRESHOLDS)


def test_no_background_pixel_counts_every_object():
    # Deliberate difference: Cellpose counts `len(np.unique(y)) - 1` objects, one too few
    # when no pixel is background; here every id > 0 is an object.
    full = np.ones((6, 6), np.int64)
    full[:, 3:] = 2
    r = cellpose_ap(full, full)
    assert (r.n_true, r.tp[0]) == (2, 2) and r.ap[0] == 1.0
    cpm = pytest.importorskip("cellpose.metrics")
    with np.errstate(invalid="ignore", divide="ignore"):
        _, tp, _, fn = cpm.average_precision(full, full, [0.5])
    assert (tp[0], fn[0]) == (2, -1)  # n_true counted as 1 there


@pytest.mark.shared_data
def test_equal_to_cellpose_on_real_labels(shared_data):
    cpm = pytest.importorskip("cellpose.metrics")
    pairs = real_pairs(shared_data)
    assert len(pairs) == N_IMAGES * len(PERTURBATIONS)
    for name, y_true, y_pred in pairs:
        try:
            _check_against_cellpose(cpm, y_true, y_pred)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from e
    # The thresholds as np.arange writes them, too (IoU ties at 0.6 / 0.75 differ).
    for _name, y_true, y_pred in pairs[:: len(PERTURBATIONS) + 1]:
        _check_against_cellpose(cpm, y_true, y_pred, MSA_THRESHOLDS)
