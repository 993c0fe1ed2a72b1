"""Panoptic quality PQ = DQ x SQ at IoU 0.5: hand-counted cases, and equality with
`stardist.matching.matching` (package `stardist`, the `refs` extra) on real DSB labels
and perturbed copies.

StarDist keeps IoUs in float32, so against it the counts and DQ are exact and SQ / PQ
agree to float32 rounding (1e-6 relative); the same pairs' IoUs recomputed in float64
from per-object masks (a brute-force check written here) give PQ to 1e-12.

Scene: three 4x4 squares on a 12x16 canvas, ids 1 (rows 0-3, cols 0-3), 2 (rows 0-3,
cols 4-7, touching 1), 3 (rows 6-9, cols 8-11).
"""

from __future__ import annotations

import numpy as np
import pytest
from real_label_cases import EMPTY, N_IMAGES, PERTURBATIONS, PRED, TRUE, paint, real_pairs

from cellsam.metrics import PanopticQuality, panoptic_quality

# ---------------------------------------------------------------- hand-counted cases


def test_hand_counted():
    r = panoptic_quality(TRUE, PRED)
    assert (r.tp, r.fp, r.fn) == (2, 1, 1)
    assert r.dq == 2 / 3  # 2 / (2 + 0.5 + 0.5)
    assert r.sq == pytest.approx(0.8, abs=1e-15)  # (1 + 0.6) / 2
    assert r.pq == pytest.approx(1.6 / 3, abs=1e-15)
    assert r.pq == pytest.approx(r.dq * r.sq, abs=1e-15)
    d = r.as_dict()
    assert d["pq"] == r.pq and d["tp"] == 2


def test_perfect_and_relabelled():
    r = panoptic_quality(TRUE, TRUE * 5 + 2 * (TRUE > 0))
    assert (r.tp, r.fp, r.fn, r.dq, r.sq, r.pq) == (3, 0, 0, 1.0, 1.0, 1.0)


def test_iou_exactly_half_counts():
    # Kirillov / StarDist: IoU >= 0.5 (HoVer-Net's get_fast_pq would need > 0.5).
    t = paint((1, 0, 4, 0, 4))
    r = panoptic_quality(t, paint((2, 0, 4, 0, 2)))
    assert (r.tp, r.fp, r.fn, r.sq) == (1, 0, 0, 0.5) and r.pq == 0.5
    # Two exact halves: one pair counts, the other half is a false positive.
    r = panoptic_quality(t, paint((2, 0, 4, 0, 2), (3, 0, 4, 2, 4)))
    assert (r.tp, r.fp, r.fn, r.sq) == (1, 1, 0, 0.5)
    assert r.dq == 1 / 1.5 and r.pq == 0.5 / 1.5


def test_under_half_is_no_match():
    t = paint((1, 0, 4, 0, 4))
    r = panoptic_quality(t, paint((2, 0, 3, 0, 2)))  # IoU 6 / 16
    assert (r.tp, r.fp, r.fn, r.dq, r.sq, r.pq) == (0, 1, 1, 0.0, 0.0, 0.0)


def test_empty_cases():
    r = panoptic_quality(TRUE, EMPTY)
    assert (r.tp, r.fp, r.fn, r.dq, r.sq, r.pq) == (0, 0, 3, 0.0, 0.0, 0.0)
    r = panoptic_quality(EMPTY, PRED)
    assert (r.tp, r.fp, r.fn, r.dq, r.sq, r.pq) == (0, 3, 0, 0.0, 0.0, 0.0)
    r = panoptic_quality(EMPTY, EMPTY)
    assert (r.tp, r.fp, r.fn, r.dq, r.sq, r.pq) == (0, 0, 0, 0.0, 0.0, 0.0)


def test_pooling_adds_counts_and_iou():
    a, b = panoptic_quality(TRUE, PRED), panoptic_quality(TRUE, TRUE)
    s = a + b
    assert isinstance(s, PanopticQuality)
    assert (s.n_true, s.n_pred, s.tp) == (6, 6, 5)
    assert s.sum_iou == pytest.approx(4.6, abs=1e-15)
    assert s.pq == pytest.approx(4.6 / 6, abs=1e-15)
    with pytest.raises(ValueError):
        a + panoptic_quality(TRUE, PRED, threshold=0.75)


def test_other_thresholds():
    assert panoptic_quality(TRUE, PRED, threshold=0.75).tp == 1
    with pytest.raises(ValueError):
        panoptic_quality(TRUE, PRED, threshold=0.0)


# ---------------------------------------------------------------- against StarDist


def _brute_iou(y_true, y_pred, a, b) -> float:
    mt, mp = y_true == a, y_pred == b
    return np.count_nonzero(mt & mp) / np.count_nonzero(mt | mp)


def _check_against_stardist(sdm, y_true, y_pred, thresh: float = 0.5) -> None:
    ours = panoptic_quality(y_true, y_pred, threshold=thresh)
    ref = sdm.matching(y_true, y_pred, thresh=thresh, report_matches=True)
    assert (ours.tp, ours.fp, ours.fn) == (ref.tp, ref.fp, ref.fn)
    assert (ours.n_true, ours.n_pred) == (ref.n_true, ref.n_pred)
    assert abs(ours.dq - ref.f1) <= 1e-12
    assert ours.pq == pytest.approx(float(ref.panoptic_quality), rel=1e-6, abs=1e-12)
    assert ours.sq == pytest.approx(float(ref.mean_matched_score), rel=1e-6, abs=1e-12)
    # StarDist's TP pairs, their IoUs recomputed in float64 from the masks.
    tp_pairs = [ref.matched_pairs[k] for k in ref.matched_tps]
    sum_iou = sum(_brute_iou(y_true, y_pred, a, b) for a, b in tp_pairs)
    den = ref.tp + ref.fp / 2 + ref.fn / 2
    assert abs(ours.sum_iou - sum_iou) <= 1e-12
    assert abs(ours.pq - (sum_iou / den if den > 0 else 0.0)) <= 1e-12


def test_hand_cases_against_stardist():
    sdm = pytest.importorskip("stardist.matching")
    for t, p in [(TRUE, PRED), (TRUE, EMPTY), (EMPTY, PRED), (EMPTY, EMPTY), (TRUE, TRUE),
                 (paint((1, 0, 4, 0, 4)), paint((2, 0, 4, 0, 2), (3, 0, 4, 2, 4)))]:
        for thresh in (0.5, 0.3, 0.75):
            _check_against_stardist(sdm, t, p, thresh)


@pytest.mark.shared_data
def test_equal_to_stardist_on_real_labels(shared_data):
    sdm = pytest.importorskip("stardist.matching")
    pairs = real_pairs(shared_data)
    assert len(pairs) == N_IMAGES * len(PERTURBATIONS)
    for name, y_true, y_pred in pairs:
        try:
            _check_against_stardist(sdm, y_true, y_pred)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from e
    # Under 0.5 the assignment's IoU tie-break decides which pairs count.
    for _name, y_true, y_pred in pairs[:: len(PERTURBATIONS) + 1]:
        _check_against_stardist(sdm, y_true, y_pred, 0.3)
