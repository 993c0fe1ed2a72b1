"""Cellpose "average precision" at IoU thresholds and Cellpose's aggregated Jaccard index.

Both reproduce the Cellpose code's numbers on integer label images `[H, W]` (0 =
background) and are checked against it in `tests/unit/test_metrics_cellpose.py`.

AP(t) (Stringer et al., "Cellpose: a generalist algorithm for cellular segmentation",
Nature Methods 2021, Methods; the reference is
`cellpose.metrics.average_precision`): true and predicted objects are matched
one-to-one by linear assignment maximising the number of pairs with IoU >= t (ties
broken by total IoU, `cellpose.metrics._true_positive`), TP = that number,
FP = n_pred - TP, FN = n_true - TP, and AP(t) = TP / (TP + FP + FN). With no object in
either image Cellpose returns 0 / 0 = NaN; `undefined` chooses that value here (NaN by
default, as Cellpose; pass 0.0 for this project's convention). Cellpose returns float32;
these are float64 and round to Cellpose's float32 values exactly. One deliberate
difference: Cellpose counts objects as `len(np.unique(y)) - 1`, one too few on an image
without a background pixel; here the count is always the number of ids > 0.

AJI as Cellpose computes it (`cellpose.metrics.aggregated_jaccard_index`, after Kumar et
al., "A dataset and a technique for generalized nuclear segmentation for computational
pathology", IEEE TMI 2017): the pairs of ONE assignment (`cellpose.metrics.mask_ious`:
the most pairs with IoU >= 0.5 first, then the highest total IoU over every assigned
pair, including pairs under 0.5) give

    AJI = sum of |T_i & P_j| over the assigned pairs / |union of all true and predicted pixels|.

This is Cellpose's variant: Kumar's AJI pairs every true object with its best-IoU
prediction and adds the unions of the pairs and the areas of unused predictions to the
denominator. With both images empty Cellpose gives 0 / 0 = NaN (`undefined` again).

The thresholds are compared as given (`iou >= t` in float64); the exact float values
matter for pairs whose IoU equals a threshold (e.g. 3/5 against 0.6 versus
`np.arange`'s 0.6000000000000001), so pass the thresholds the reference run used.
The overlaps come from `matching.compute_overlaps` (one pass over the pixels), the
counts from `f1.match_counts`; nothing loops over objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .f1 import DEFAULT_THRESHOLDS, match_counts
from .matching import Overlaps, compute_overlaps, max_weight_matching

__all__ = [
    "CellposeAP",
    "aggregated_jaccard_index",
    "cellpose_ap",
    "match_count_then_iou",
]


@dataclass(frozen=True)
class CellposeAP:
    """Cellpose AP of one image at several IoU thresholds.

    Attributes:
        thresholds: `[k]` IoU thresholds, as given.
        n_true: number of true objects.
        n_pred: number of predicted objects.
        tp: `[k]` true positives at each threshold.
        undefined: the AP reported with no object in either image (0 / 0).
    """

    thresholds: np.ndarray
    n_true: int
    n_pred: int
    tp: np.ndarray
    undefined: float = float("nan")

    @property
    def fp(self) -> np.ndarray:
        """`[k]` false positives, n_pred - TP."""
        return self.n_pred - self.tp

    @property
    def fn(self) -> np.ndarray:
        """`[k]` false negatives, n_true - TP."""
        return self.n_true - self.tp

    @property
    def ap(self) -> np.ndarray:
        """`[k]` float64 TP / (TP + FP + FN); `undefined` where the denominator is 0."""
        den = (self.tp + self.fp + self.fn).astype(np.float64)
        out = np.full(self.tp.shape, self.undefined, np.float64)
        np.divide(self.tp.astype(np.float64), den, out=out, where=den > 0)
        return out

    def as_dict(self) -> dict[str, float]:
        """Flat dict: `n_true`, `n_pred`, and `ap@0.50`, `tp@0.50`, ... per threshold."""
        out: dict[str, float] = {"n_true": self.n_true, "n_pred": self.n_pred}
        for t, ap, tp, fp, fn in zip(self.thresholds, self.ap, self.tp, self.fp, self.fn):
            key = f"@{t:.2f}"
            out["ap" + key], out["tp" + key] = float(ap), int(tp)
            out["fp" + key], out["fn" + key] = int(fp), int(fn)
        return out


def cellpose_ap(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    overlaps: Overlaps | None = None,
    undefined: float = float("nan"),
) -> CellposeAP:
    """Cellpose AP = TP / (TP + FP + FN) of one image pair at each IoU threshold.

    Args:
        y_true: true label image `[H, W]` (0 = background, ids need not be contiguous).
        y_pred: predicted label image `[H, W]`.
        thresholds: IoU thresholds (default 0.50, 0.55, ..., 0.95).
        overlaps: precomputed `compute_overlaps(y_true, y_pred)` to reuse.
        undefined: AP when neither image has an object (Cellpose: NaN).

    Returns:
        `CellposeAP`; `.ap [k]` equals `cellpose.metrics.average_precision(y_true, y_pred,
        list(thresholds))[0]` (float32 there).
    """
    ov = compute_overlaps(y_true, y_pred) if overlaps is None else overlaps
    counts = match_counts(y_true, y_pred, thresholds, overlaps=ov)
    return CellposeAP(
        thresholds=np.asarray(thresholds, np.float64),
        n_true=ov.n_true,
        n_pred=ov.n_pred,
        tp=np.array([c.tp for c in counts], np.int64),
        undefined=float(undefined),
    )


def match_count_then_iou(overlaps: Overlaps, threshold: float = 0.5) -> np.ndarray:
    """The assignment of Cellpose's `mask_ious` / StarDist's `matching`, on sparse overlaps.

    Their `linear_sum_assignment` on the cost `-(iou >= t) - iou / (2 n_min)` picks the
    most pairs with IoU >= `threshold` first and then the highest total IoU over ALL
    assigned pairs, pairs under the threshold included. When the pairs at or above the
    threshold already form a matching (always for threshold > 0.5), all of them are in
    every optimum, so only the objects they leave over are assigned, by total IoU;
    otherwise the whole graph is solved with the reference's weights. Pairs that do not
    touch add nothing and are left out.

    Returns:
        `[n_pairs]` boolean mask over `overlaps.rows / cols` of the assigned pairs.
    """
    iou = overlaps.iou
    rows, cols = overlaps.rows, overlaps.cols
    above = iou >= threshold
    r_a, c_a = rows[above], cols[above]
    n_t, n_p = overlaps.n_true, overlaps.n_pred
    is_matching = (
        np.bincount(r_a, minlength=n_t).max(initial=0) <= 1
        and np.bincount(c_a, minlength=n_p).max(initial=0) <= 1
    )
    if not is_matching:  # ties at IoU exactly 0.5, or a threshold under 0.5
        weights = above + iou / (2.0 * max(min(n_t, n_p), 1))
        return max_weight_matching(rows, cols, weights, n_t, n_p)
    chosen = above.copy()
    free_t = np.ones(n_t, bool)
    free_t[r_a] = False
    free_p = np.ones(n_p, bool)
    free_p[c_a] = False
    rest = np.flatnonzero(free_t[rows] & free_p[cols])
    chosen[rest] = max_weight_matching(rows[rest], cols[rest], iou[rest], n_t, n_p)
    return chosen


def aggregated_jaccard_index(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    overlaps: Overlaps | None = None,
    undefined: float = float("nan"),
) -> float:
    """Cellpose's AJI of one image pair (see the module docstring).

    Args:
        y_true: true label image `[H, W]` (0 = background).
        y_pred: predicted label image `[H, W]`.
        overlaps: precomputed `compute_overlaps(y_true, y_pred)` to reuse.
        undefined: value when both images are empty (Cellpose: NaN).

    Returns:
        float64 equal to `cellpose.metrics.aggregated_jaccard_index([y_true], [y_pred])[0]`;
        0 when one image is empty and the other is not.
    """
    ov = compute_overlaps(y_true, y_pred) if overlaps is None else overlaps
    union = int(ov.true_areas.sum() + ov.pred_areas.sum() - ov.intersections.sum())
    if union == 0:
        return float(undefined)
    chosen = match_count_then_iou(ov, 0.5)
    return int(ov.intersections[chosen].sum()) / union
