"""Panoptic quality PQ = DQ x SQ of instance label images, at IoU 0.5.

Definition (Kirillov et al., "Panoptic Segmentation", CVPR 2019, Eq. 1; for nuclei
Graham et al., "HoVer-Net", Medical Image Analysis 2019, as used by CellViT, Hörst et
al., Medical Image Analysis 2024, and PanNuke): true and predicted objects are matched
one-to-one; a pair with IoU >= 0.5 is a true positive (TP), an unmatched prediction a
false positive (FP), an unmatched true object a false negative (FN), and

    DQ = TP / (TP + FP / 2 + FN / 2)     (detection quality, the F1 at IoU 0.5)
    SQ = sum of the IoUs of the TP pairs / TP     (segmentation quality)
    PQ = DQ x SQ = sum of TP IoUs / (TP + FP / 2 + FN / 2).

The reference code is `stardist.matching.matching` (its `f1`, `mean_matched_score` and
`panoptic_quality` are DQ, SQ and PQ): the same TP / FP / FN exactly and PQ up to
StarDist's float32 IoUs (it stores IoU as float32, so its PQ carries ~1e-7 relative
rounding; ours is float64, and equals StarDist's pairs' float64 IoUs to 1e-12). At an
IoU above 1/2 a pair pins both objects, so at 0.5 the pairs need no assignment except for
exact ties (an object cut into two halves, both at IoU 0.5), which are assigned like
StarDist's (`cellpose_ap.match_count_then_iou`). Undefined values are 0, as in StarDist:
DQ and PQ with no object at all, SQ with no TP.

HoVer-Net's `get_fast_pq` differs in two details: it takes pairs with IoU strictly > 0.5
and divides the IoU sum by TP + 1e-6. So a pair at IoU exactly 0.5 counts here (and in
StarDist) but not there, and SQ there is smaller by a relative 1e-6 / TP.

Per-image results add up: `a + b` pools the counts and IoU sums of two images (Kirillov's
dataset-level PQ); HoVer-Net / CellViT report the mean of per-image PQ instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cellpose_ap import match_count_then_iou
from .f1 import MatchCounts, _ratio
from .matching import Overlaps, compute_overlaps, match_pairs

__all__ = ["PanopticQuality", "panoptic_quality"]


@dataclass(frozen=True)
class PanopticQuality(MatchCounts):
    """Panoptic counts of one image (or a pool of images) at one IoU threshold: the match
    counts (`threshold`, `n_true`, `n_pred`, `tp`; `fp`, `fn`, `f1` ...) plus
    `sum_iou`, the float64 sum of the IoUs of the TP pairs (IoU >= threshold).
    """

    sum_iou: float = 0.0

    @property
    def dq(self) -> float:
        """TP / (TP + FP / 2 + FN / 2); 0 with no object at all."""
        return _ratio(self.tp, self.tp + 0.5 * self.fp + 0.5 * self.fn)

    @property
    def sq(self) -> float:
        """Mean IoU of the TP pairs; 0 with no TP."""
        return _ratio(self.sum_iou, self.tp)

    @property
    def pq(self) -> float:
        """DQ x SQ = sum of TP IoUs / (TP + FP / 2 + FN / 2); 0 with no object at all."""
        return _ratio(self.sum_iou, self.tp + 0.5 * self.fp + 0.5 * self.fn)

    def __add__(self, other: PanopticQuality) -> PanopticQuality:
        if not np.isclose(self.threshold, other.threshold):
            raise ValueError("cannot pool panoptic counts taken at different thresholds")
        return PanopticQuality(
            self.threshold, self.n_true + other.n_true, self.n_pred + other.n_pred,
            self.tp + other.tp, self.sum_iou + other.sum_iou,
        )

    def as_dict(self) -> dict[str, float]:
        return {
            "threshold": self.threshold, "n_true": self.n_true, "n_pred": self.n_pred,
            "tp": self.tp, "fp": self.fp, "fn": self.fn, "dq": self.dq, "sq": self.sq,
            "pq": self.pq,
        }


def panoptic_quality(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    threshold: float = 0.5,
    overlaps: Overlaps | None = None,
) -> PanopticQuality:
    """PQ, DQ and SQ of one image pair.

    Args:
        y_true: true label image `[H, W]` (0 = background, ids need not be contiguous).
        y_pred: predicted label image `[H, W]`.
        threshold: IoU of a TP pair; PQ is defined at 0.5. Under 0.5 the pairs are
            chosen as StarDist does (most pairs at or above the threshold, then the
            highest total IoU over all assigned pairs), so the IoU sum still matches it.
        overlaps: precomputed `compute_overlaps(y_true, y_pred)` to reuse.

    Returns:
        `PanopticQuality`; `.pq`, `.dq`, `.sq` correspond to StarDist's
        `matching(y_true, y_pred, thresh=threshold)` fields `panoptic_quality`, `f1`,
        `mean_matched_score`.
    """
    if not threshold > 0:
        raise ValueError("threshold must be > 0")
    ov = compute_overlaps(y_true, y_pred) if overlaps is None else overlaps
    iou = ov.iou
    if threshold >= 0.5:
        rows, cols = match_pairs(ov, float(threshold))
        # Pairs are sorted by (row, col): locate each matched pair's IoU.
        keys = ov.rows * max(ov.n_pred, 1) + ov.cols
        idx = np.searchsorted(keys, rows * max(ov.n_pred, 1) + cols)
        tp_iou = iou[idx]
    else:
        chosen = match_count_then_iou(ov, float(threshold))
        tp_iou = iou[chosen & (iou >= threshold)]
    return PanopticQuality(
        threshold=float(threshold),
        n_true=ov.n_true,
        n_pred=ov.n_pred,
        tp=int(tp_iou.size),
        sum_iou=float(np.sum(tp_iou)),
    )
