"""Object F1 at IoU thresholds, as the released CellSAM evaluation computes it.

Per image: true and predicted objects are matched one-to-one by linear assignment on
IoU (the Cellpose / StarDist / NeurIPS cell-seg cost, which maximises the number of pairs
with IoU >= threshold, then their IoU; see `matching.match_pairs`); a matched pair with
IoU >= threshold is a true positive (TP), an unmatched prediction a false positive (FP),
an unmatched true object a false negative (FN).

- per-image F1 = TP / (TP + 0.5 (FP + FN)); the mean over images is the headline number;
- pooled precision / recall / F1 from the sums of TP, FP, FN over all images;
- "AP" in the Cellpose / StarDist sense (micro-sam's "SA") = TP / (TP + FP + FN);
  F1 = 2 AP / (1 + AP).

Undefined values count as 0 (REFERENCE section 5): an image whose F1 is undefined, i.e.
one with NO true and NO predicted object (0 / 0), scores F1 = 0 and AP = 0 and so pulls
the per-image mean down; pooled precision with no prediction at all, or pooled recall
with no true object at all, is also 0.

Every count is a plain int and every accumulator a flat float vector, so per-image
results add up across images and across processes (`F1Accumulator.to_vector` is what a
DDP all-reduce would sum).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .matching import Overlaps, compute_overlaps, match_pairs

__all__ = [
    "DEFAULT_THRESHOLDS",
    "F1Accumulator",
    "MatchCounts",
    "evaluate_f1",
    "f1_score",
    "match_counts",
]

#: IoU thresholds 0.50, 0.55, ..., 0.95.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def _ratio(num: float, den: float) -> float:
    """num / den, with 0 for an undefined 0 / 0 (the REFERENCE convention)."""
    return float(num) / float(den) if den > 0 else 0.0


@dataclass(frozen=True)
class MatchCounts:
    """Object counts of one image (or a pool of images) at one IoU threshold.

    `a + b` pools two counts at the same threshold (sum of TP, n_true, n_pred).
    """

    threshold: float
    n_true: int
    n_pred: int
    tp: int

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_true - self.tp

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.n_pred)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.n_true)

    @property
    def f1(self) -> float:
        """TP / (TP + 0.5 (FP + FN)); 0 when there is no object at all."""
        return _ratio(self.tp, self.tp + 0.5 * (self.fp + self.fn))

    @property
    def ap(self) -> float:
        """Cellpose / StarDist "AP" = TP / (TP + FP + FN); 0 when there is no object."""
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    def __add__(self, other: MatchCounts) -> MatchCounts:
        if not np.isclose(self.threshold, other.threshold):
            raise ValueError("cannot pool counts taken at different IoU thresholds")
        return MatchCounts(
            self.threshold, self.n_true + other.n_true, self.n_pred + other.n_pred,
            self.tp + other.tp,
        )

    def as_dict(self) -> dict[str, float]:
        return {
            "threshold": self.threshold, "n_true": self.n_true, "n_pred": self.n_pred,
            "tp": self.tp, "fp": self.fp, "fn": self.fn, "precision": self.precision,
            "recall": self.recall, "f1": self.f1, "ap": self.ap,
        }


def match_counts(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    thresholds: Sequence[float] = (0.5,),
    overlaps: Overlaps | None = None,
) -> list[MatchCounts]:
    """TP / FP / FN of one image at each IoU threshold.

    Args:
        y_true: true label image `[H, W]` (0 = background).
        y_pred: predicted label image `[H, W]`.
        thresholds: IoU thresholds; the overlaps are computed once and the matching is
            redone per threshold (the optimal one-to-one matching can differ).
        overlaps: precomputed `compute_overlaps(y_true, y_pred)` to reuse.

    Returns:
        One `MatchCounts` per threshold, in the order given.
    """
    ov = compute_overlaps(y_true, y_pred) if overlaps is None else overlaps
    out = []
    for t in thresholds:
        rows, _ = match_pairs(ov, float(t))
        out.append(MatchCounts(float(t), ov.n_true, ov.n_pred, int(rows.size)))
    return out


def f1_score(y_true: np.ndarray, y_pred: np.ndarray, threshold: float = 0.5) -> float:
    """Per-image object F1 of two label images `[H, W]` at one IoU threshold (0 when
    both images are empty)."""
    return match_counts(y_true, y_pred, (threshold,))[0].f1


class F1Accumulator:
    """Sums per-image counts and per-image F1 / AP over images, for several thresholds.

    State (all additive): number of images, total n_true, total n_pred, and per
    threshold the TP sum, the per-image-F1 sum and the per-image-AP sum.
    """

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> None:
        self.thresholds = tuple(float(t) for t in thresholds)
        k = len(self.thresholds)
        self.n_images = 0
        self.n_true = 0
        self.n_pred = 0
        self.tp = np.zeros(k, np.int64)
        self.sum_f1 = np.zeros(k)
        self.sum_ap = np.zeros(k)

    def update(self, y_true: np.ndarray, y_pred: np.ndarray) -> list[MatchCounts]:
        """Add one image pair `[H, W]`; returns its per-threshold counts."""
        counts = match_counts(y_true, y_pred, self.thresholds)
        self.add_counts(counts)
        return counts

    def add_counts(self, counts: Sequence[MatchCounts]) -> None:
        """Add the per-threshold counts of ONE image."""
        if len(counts) != len(self.thresholds):
            raise ValueError("need one MatchCounts per threshold")
        self.n_images += 1
        self.n_true += counts[0].n_true
        self.n_pred += counts[0].n_pred
        for i, c in enumerate(counts):
            self.tp[i] += c.tp
            self.sum_f1[i] += c.f1
            self.sum_ap[i] += c.ap

    def to_vector(self) -> np.ndarray:
        """Flat float64 state `[3 + 3 * n_thresholds]`; sum these across processes."""
        head = np.array([self.n_images, self.n_true, self.n_pred], np.float64)
        return np.concatenate([head, self.tp.astype(np.float64), self.sum_f1, self.sum_ap])

    @classmethod
    def from_vector(cls, vec: np.ndarray, thresholds: Sequence[float]) -> F1Accumulator:
        """Rebuild an accumulator from a (possibly all-reduced) `to_vector()` state."""
        acc = cls(thresholds)
        k = len(acc.thresholds)
        vec = np.asarray(vec, np.float64)
        if vec.shape != (3 + 3 * k,):
            raise ValueError(f"state vector must have shape ({3 + 3 * k},)")
        acc.n_images, acc.n_true, acc.n_pred = (int(round(v)) for v in vec[:3])
        acc.tp = np.rint(vec[3 : 3 + k]).astype(np.int64)
        acc.sum_f1 = vec[3 + k : 3 + 2 * k].copy()
        acc.sum_ap = vec[3 + 2 * k :].copy()
        return acc

    def __add__(self, other: F1Accumulator) -> F1Accumulator:
        if self.thresholds != other.thresholds:
            raise ValueError("thresholds differ")
        return F1Accumulator.from_vector(self.to_vector() + other.to_vector(), self.thresholds)

    def pooled(self) -> list[MatchCounts]:
        """Pooled counts (sums over images), one per threshold."""
        return [
            MatchCounts(t, self.n_true, self.n_pred, int(tp))
            for t, tp in zip(self.thresholds, self.tp)
        ]

    def compute(self) -> dict[str, float]:
        """Flat dict of results; per-threshold keys end in `@0.50` etc.

        `f1_mean` / `ap_mean` are means of per-image values (0 with no image);
        `f1_pooled`, `ap_pooled`, `precision`, `recall` come from summed counts.
        """
        out: dict[str, float] = {
            "n_images": self.n_images, "n_true": self.n_true, "n_pred": self.n_pred,
        }
        for i, c in enumerate(self.pooled()):
            key = f"@{c.threshold:.2f}"
            out["tp" + key] = c.tp
            out["fp" + key] = c.fp
            out["fn" + key] = c.fn
            out["precision" + key] = c.precision
            out["recall" + key] = c.recall
            out["f1_pooled" + key] = c.f1
            out["ap_pooled" + key] = c.ap
            out["f1_mean" + key] = _ratio(self.sum_f1[i], self.n_images)
            out["ap_mean" + key] = _ratio(self.sum_ap[i], self.n_images)
        return out


def evaluate_f1(
    y_trues: Iterable[np.ndarray],
    y_preds: Iterable[np.ndarray],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, float]:
    """F1 / AP over a set of images (pairs of label images `[H, W]`, same order).

    Returns `F1Accumulator.compute()`: e.g. `out["f1_mean@0.50"]` is the per-image mean
    F1 at IoU 0.5 (the released CellSAM number) and `out["f1_pooled@0.50"]` the pooled F1.
    """
    acc = F1Accumulator(thresholds)
    for t, p in zip(y_trues, y_preds, strict=True):
        acc.update(t, p)
    return acc.compute()
