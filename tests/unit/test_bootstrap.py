"""Bootstrap intervals (cellsam.metrics.bootstrap) and the per-image metric rows they use
(cellsam.metrics.per_image), on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_report import PAIRS as SCORED_PAIRS

from cellsam.metrics.bootstrap import (
    HEADLINE,
    bootstrap_settings,
    headline_intervals,
    paired_interval,
    ratio_intervals,
    resample_weights,
)
from cellsam.metrics.per_image import family_summary, image_metrics, iou_curve
from cellsam.metrics.report import add_intervals, image_record, summarize

# The scenes of test_report.py (hit + false blob + miss; both empty; a cell cut in two
# halves, IoU 0.5 each; two merged), without their scores.
PAIRS = [(true, pred) for true, pred, _ in SCORED_PAIRS]


def records():
    return [image_record("a", i, t, p, None, False, name=f"img{i}")
            for i, (t, p) in enumerate(PAIRS)]


# -- intervals ------------------------------------------------------------------------------
def test_mean_interval_by_hand():
    # Resample means 0, 0.5, 1; numpy's linear percentiles: 2.5 % at position 0.05 -> 0.025.
    w = np.array([[2, 0], [1, 1], [0, 2]])
    lo, hi = ratio_intervals({"m": (np.array([0.0, 1.0]), np.ones(2))}, weights=w)["m"]
    assert (lo, hi) == pytest.approx((0.025, 0.975), abs=1e-15)


def test_ratio_of_sums_interval_by_hand():
    # num [1, 3], den [2, 2]: resample ratios 2/4, 6/4, 4/4 -> sorted 0.5, 1, 1.5; the 25 %
    # and 75 % percentiles sit at positions 0.5 and 1.5: 0.75 and 1.25.
    w = np.array([[2, 0], [0, 2], [1, 1]])
    out = ratio_intervals({"r": (np.array([1.0, 3.0]), np.array([2.0, 2.0]))}, level=0.5,
                          weights=w)
    assert out["r"] == pytest.approx((0.75, 1.25), abs=1e-15)


def test_undefined_resamples_are_left_out_and_empty_input_is_nan():
    # Image 2 is undefined (den 0): the resample holding only it is 0/0 and left out.
    w = np.array([[0, 2], [2, 0], [1, 1]])
    out = ratio_intervals({"ap": (np.array([0.4, 0.0]), np.array([1.0, 0.0]))}, weights=w)
    assert out["ap"] == pytest.approx((0.4, 0.4))
    nan = ratio_intervals({"x": (np.zeros(0), np.zeros(0))})["x"]
    assert all(math.isnan(v) for v in nan)
    with pytest.raises(ValueError, match="level"):
        ratio_intervals({"x": (np.ones(2), np.ones(2))}, level=1.0)


def test_constant_values_give_a_point_and_seeding_repeats():
    cols = {"c": (np.full(7, 0.3), np.ones(7))}
    assert ratio_intervals(cols, n_boot=300)["c"] == pytest.approx((0.3, 0.3))
    vals = np.random.default_rng(1).random(50)
    cols = {"v": (vals, np.ones(50))}
    a = ratio_intervals(cols, n_boot=600, seed=3)["v"]
    assert ratio_intervals(cols, n_boot=600, seed=3)["v"] == a
    assert ratio_intervals(cols, n_boot=600, seed=4)["v"] != a
    # resample_weights draws exactly the resamples of ratio_intervals (600 > one chunk)
    w = resample_weights(50, 600, 3)
    assert w.shape == (600, 50) and (w.sum(1) == 50).all()
    assert ratio_intervals(cols, weights=w)["v"] == a


def test_interval_of_a_mean_matches_the_normal_approximation():
    # 400 standard normal values: the 95 % interval of the mean is about mean +- 1.96/20.
    x = np.random.default_rng(0).standard_normal(400)
    lo, hi = ratio_intervals({"x": (x, np.ones(400))}, n_boot=4000, seed=0)["x"]
    half = 1.96 * x.std(ddof=1) / 20
    assert lo == pytest.approx(x.mean() - half, abs=0.012)
    assert hi == pytest.approx(x.mean() + half, abs=0.012)


def test_paired_interval_by_hand():
    d = np.array([0.25, 0.0, 0.5, -0.25])
    w = np.array([[4, 0, 0, 0], [0, 0, 4, 0], [1, 1, 1, 1]])  # means 0.25, 0.5, 0.125
    assert paired_interval(d, level=0.5, weights=w) == pytest.approx((0.1875, 0.375))


def test_settings_defaults():
    assert bootstrap_settings(None) == {"n": 2000, "seed": 0, "level": 0.95}
    assert bootstrap_settings({"n": 10}) == {"n": 10, "seed": 0, "level": 0.95}


# -- per-image rows and summaries ---------------------------------------------------------
def test_per_image_rows_by_hand():
    rows = [image_metrics(r) for r in records()]
    hit, empty, split, merge = rows
    assert hit["name"] == "img0" and (hit["n_true"], hit["n_pred"], hit["tp_50"]) == (2, 2, 1)
    assert (hit["f1_50"], hit["f1_95"], hit["cellpose_ap_50"]) == (0.5, 0.5, pytest.approx(1 / 3))
    assert (hit["pq_50"], hit["dq_50"], hit["sq_50"]) == (0.5, 0.5, 1.0)
    assert hit["aji"] == pytest.approx(64 / 144)  # 64 shared px / (64 + 64 + 16) px
    assert hit["msa"] == pytest.approx(1 / 3) and hit["deepcell_correct"] == 1
    # both empty: CellSAM / micro-sam / StarDist say 0, Cellpose says undefined (NaN)
    assert empty["f1_50"] == empty["msa"] == empty["pq_50"] == 0
    assert math.isnan(empty["cellpose_ap_50"]) and math.isnan(empty["aji"])
    # one of two halves matches at IoU exactly 0.5, nothing above
    assert (split["f1_50"], split["f1_55"]) == (pytest.approx(2 / 3), 0.0)
    assert (split["cellpose_ap_50"], split["sa50"], split["sa75"]) == (0.5, 0.5, 0.0)
    assert split["msa"] == pytest.approx(0.05)
    assert (split["sq_50"], split["pq_50"]) == (0.5, pytest.approx(1 / 3))
    assert split["aji"] == 0.5 and split["splits"] == 1
    assert merge["merges"] == 1 and merge["aji"] == 0.5 and merge["cellpose_ap_50"] == 0.5


def test_family_summary_and_curve_by_hand():
    s = family_summary(records())
    assert s["cellpose_ap_50"] == pytest.approx((1 / 3 + 0.5 + 0.5) / 3)  # NaN image left out
    assert s["aji"] == pytest.approx((64 / 144 + 0.5 + 0.5) / 3)
    assert s["pq_50"] == pytest.approx((0.5 + 0 + 1 / 3 + 1 / 3) / 4)
    assert s["msa"] == pytest.approx((1 / 3 + 0 + 0.05 + 0.05) / 4)
    # pooled: TP IoU sum 1 + 0.5 + 0.5 over TP 3 + (FP 2 + FN 2) / 2
    assert s["pq_50_pooled"] == pytest.approx(2 / 5)
    curve = iou_curve([image_metrics(r) for r in records()])
    assert curve["iou"][0] == 0.5 and curve["iou"][-1] == 0.95
    assert curve["f1_mean"][0] == pytest.approx((0.5 + 0 + 2 / 3 + 2 / 3) / 4)
    assert curve["f1_mean"][1] == pytest.approx(0.5 / 4)  # only the exact hit is left
    assert curve["cellpose_ap"][1] == pytest.approx((1 / 3 + 0 + 0) / 3)


def test_headline_point_estimates_equal_the_summary():
    recs = records() * 3  # 12 images
    summary = summarize(recs, coco=False)["a"]
    rows = [image_metrics(r) for r in recs]
    for key, columns in HEADLINE.items():
        num, den = columns(rows)
        assert num.sum() / den.sum() == pytest.approx(summary[key], abs=1e-12), key
    ci = headline_intervals(rows, n_boot=500, seed=1)
    for key, (lo, hi) in ci.items():
        assert lo <= summary[key] + 1e-12 and summary[key] <= hi + 1e-12, key
    out = add_intervals(summarize(recs, coco=False), recs, n_boot=500, seed=1)
    assert out["a"]["ci"] == {k: list(v) for k, v in ci.items()} == out["all"]["ci"]
    assert "ci" not in add_intervals(summarize(recs, coco=False), recs, n_boot=0)["a"]
