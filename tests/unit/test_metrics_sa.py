"""micro-sam's mSA / SA50 / SA75: hand-counted cases, and equality with
`elf.evaluation.mean_segmentation_accuracy` (package `python-elf`, the `refs` extra;
micro-sam's own evaluation calls it) on real DSB labels and perturbed copies.

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
    cellpose_ap,
    mean_segmentation_accuracy,
    segmentation_accuracy,
)

# ---------------------------------------------------------------- hand-counted cases


def test_thresholds_are_np_arange():
    assert len(MSA_THRESHOLDS) == 10
    assert MSA_THRESHOLDS == tuple(np.arange(0.5, 1.0, 0.05).tolist())
    assert MSA_THRESHOLDS[2] > 0.6 and MSA_THRESHOLDS[5] > 0.75


def test_hand_counted():
    r = segmentation_accuracy(TRUE, PRED)
    # 0.50, 0.55: TP 2 of 3 + 3 - 2 = 4 -> 0.5; from "0.6" (0.6000000000000001) on the
    # IoU-0.6 pair no longer counts: TP 1, SA = 1 / 5.
    assert r.tp.tolist() == [2, 2] + [1] * 8
    np.testing.assert_array_equal(r.sa, [0.5, 0.5] + [0.2] * 8)
    assert r.msa == pytest.approx((2 * 0.5 + 8 * 0.2) / 10, abs=1e-15)
    assert (r.sa50, r.sa75) == (0.5, 0.2)
    assert mean_segmentation_accuracy(TRUE, PRED) == r.msa
    assert r.as_dict() == {"n_true": 3, "n_pred": 3, "msa": r.msa, "sa50": 0.5, "sa75": 0.2}


def test_sa_is_cellpose_ap_at_same_thresholds():
    r = segmentation_accuracy(TRUE, PRED, thresholds=DEFAULT_THRESHOLDS)
    assert r.tp.tolist() == [2, 2, 2] + [1] * 7  # rounded 0.60 keeps the 0.6 pair
    np.testing.assert_array_equal(r.sa, cellpose_ap(TRUE, PRED).ap)


def test_iou_exactly_three_quarters():
    # IoU 12 / 16 = 0.75 counts at SA70 but not at micro-sam's SA75 (0.7500000000000002).
    t = paint((1, 0, 4, 0, 4))
    p = paint((2, 0, 3, 0, 4))
    r = segmentation_accuracy(t, p)
    assert r.tp.tolist() == [1] * 5 + [0] * 5
    assert (r.sa50, r.sa_at(0.7), r.sa75) == (1.0, 1.0, 0.0)
    assert r.msa == 0.5
    assert cellpose_ap(t, p, thresholds=(0.75,)).ap[0] == 1.0


def test_empty_cases():
    for t, p, n in [(TRUE, EMPTY, (3, 0)), (EMPTY, PRED, (0, 3)), (EMPTY, EMPTY, (0, 0))]:
        r = segmentation_accuracy(t, p)
        assert (r.n_true, r.n_pred) == n
        assert r.tp.tolist() == [0] * 10
        np.testing.assert_array_equal(r.sa, np.zeros(10))
        assert (r.msa, r.sa50, r.sa75) == (0.0, 0.0, 0.0)


def test_missing_threshold():
    r = segmentation_accuracy(TRUE, PRED, thresholds=(0.5,))
    assert r.sa50 == 0.5
    with pytest.raises(KeyError):
        _ = r.sa75
    assert "sa75" not in r.as_dict()


# ---------------------------------------------------------------- against python-elf


def _check_against_elf(msa_ref, y_true, y_pred, thresholds=None) -> None:
    ours = segmentation_accuracy(y_true, y_pred, MSA_THRESHOLDS if thresholds is None
                                 else thresholds)
    # elf's argument order: segmentation first, ground truth second.
    msa, accs = msa_ref(y_pred, y_true, thresholds=thresholds, return_accuracies=True)
    assert abs(ours.msa - msa) <= 1e-12, (ours.msa, msa)
    np.testing.assert_allclose(ours.sa, np.asarray(accs, np.float64), rtol=0, atol=1e-12)
    if thresholds is None:  # micro-sam's SA50 = scores[0], SA75 = scores[5]
        assert abs(ours.sa50 - accs[0]) <= 1e-12 and abs(ours.sa75 - accs[5]) <= 1e-12


def test_hand_cases_against_elf():
    ev = pytest.importorskip("elf.evaluation")
    for t, p in [(TRUE, PRED), (TRUE, EMPTY), (EMPTY, PRED), (EMPTY, EMPTY), (TRUE, TRUE),
                 (paint((1, 0, 4, 0, 4)), paint((2, 0, 3, 0, 4)))]:
        _check_against_elf(ev.mean_segmentation_accuracy, t, p)
        _check_against_elf(ev.mean_segmentation_accuracy, t, p, list(DEFAULT_THRESHOLDS))


@pytest.mark.shared_data
def test_equal_to_elf_on_real_labels(shared_data):
    ev = pytest.importorskip("elf.evaluation")
    pairs = real_pairs(shared_data)
    assert len(pairs) == N_IMAGES * len(PERTURBATIONS)
    for name, y_true, y_pred in pairs:
        try:
            _check_against_elf(ev.mean_segmentation_accuracy, y_true, y_pred)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from e
