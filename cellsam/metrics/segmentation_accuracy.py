"""micro-sam's segmentation accuracy: mSA, SA50 and SA75 of instance label images.

Definition (Archit et al., "Segment Anything for Microscopy", Nature Methods 2025,
Methods; after the DSB 2018 Nucleus Segmentation Challenge metric, Caicedo
et al., Nature Methods 2019): at an IoU threshold t, true and predicted objects are
matched one-to-one maximising the number of pairs with IoU >= t, and

    SA(t) = TP / (TP + FP + FN)     (0 when TP = 0, empty images included)
    mSA   = mean of SA(t) over t in np.arange(0.5, 1.0, 0.05)   (10 thresholds)
    SA50  = SA at the first threshold (0.5), SA75 = SA at the sixth (np.arange's 0.75...).

The reference code is `elf.evaluation.mean_segmentation_accuracy` (python-elf), which
micro-sam's `micro_sam.evaluation.evaluation.run_evaluation` calls per image (then
averaging mSA, SA50 = `scores[0]` and SA75 = `scores[5]` over images). SA(t) is the
Cellpose / StarDist "AP" at t (`f1.MatchCounts.ap`), with one convention of elf's kept
here: its thresholds are `np.arange(0.5, 1.0, 0.05)` exactly, i.e. 0.6000000000000001,
0.7500000000000002, ..., so a pair whose IoU is exactly 3/5 or 3/4 does NOT count at
"0.6" or "0.75" (it does with Cellpose's rounded thresholds). The default thresholds
here are those same floats. (micro-sam also relabels the ground truth into connected
components with `skimage.measure.label` before scoring; that is data preparation, not
part of the metric, and is not done here.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .f1 import match_counts
from .matching import Overlaps, compute_overlaps

__all__ = [
    "MSA_THRESHOLDS",
    "SegmentationAccuracy",
    "mean_segmentation_accuracy",
    "segmentation_accuracy",
]

#: elf's default IoU thresholds, `np.arange(0.5, 1.0, 0.05)` bit for bit.
MSA_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.arange(0.5, 1.0, 0.05))


@dataclass(frozen=True)
class SegmentationAccuracy:
    """Segmentation accuracy of one image at several IoU thresholds.

    Attributes:
        thresholds: `[k]` IoU thresholds.
        n_true: number of true objects.
        n_pred: number of predicted objects.
        tp: `[k]` true positives at each threshold.
    """

    thresholds: tuple[float, ...]
    n_true: int
    n_pred: int
    tp: np.ndarray

    @property
    def sa(self) -> np.ndarray:
        """`[k]` float64 SA(t) = TP / (TP + FP + FN) = TP / (n_true + n_pred - TP); 0
        where TP = 0."""
        tp = self.tp.astype(np.float64)
        den = self.n_true + self.n_pred - tp
        out = np.zeros(tp.shape, np.float64)
        np.divide(tp, den, out=out, where=self.tp > 0)
        return out

    @property
    def msa(self) -> float:
        """Mean of SA over the thresholds (`np.mean`, as elf)."""
        return float(np.mean(self.sa))

    def sa_at(self, threshold: float) -> float:
        """SA at the listed threshold closest to `threshold` (within 1e-6)."""
        th = np.asarray(self.thresholds, np.float64)
        i = int(np.argmin(np.abs(th - threshold)))
        if th.size == 0 or abs(th[i] - threshold) > 1e-6:
            raise KeyError(f"no threshold {threshold} among {self.thresholds}")
        return float(self.sa[i])

    @property
    def sa50(self) -> float:
        return self.sa_at(0.5)

    @property
    def sa75(self) -> float:
        return self.sa_at(0.75)

    def as_dict(self) -> dict[str, float]:
        """`n_true`, `n_pred`, `msa`, `sa50`, `sa75` (when those thresholds are listed)."""
        out: dict[str, float] = {"n_true": self.n_true, "n_pred": self.n_pred,
                                 "msa": self.msa}
        for name, t in (("sa50", 0.5), ("sa75", 0.75)):
            try:
                out[name] = self.sa_at(t)
            except KeyError:
                pass
        return out


def segmentation_accuracy(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    thresholds: Sequence[float] = MSA_THRESHOLDS,
    overlaps: Overlaps | None = None,
) -> SegmentationAccuracy:
    """SA at each threshold (and mSA, SA50, SA75) of one image pair.

    Args:
        y_true: true label image `[H, W]` (0 = background, ids need not be contiguous).
        y_pred: predicted label image `[H, W]`.
        thresholds: IoU thresholds (default elf's `np.arange(0.5, 1.0, 0.05)`).
        overlaps: precomputed `compute_overlaps(y_true, y_pred)` to reuse.

    Returns:
        `SegmentationAccuracy`; `.msa` and `.sa` equal elf's
        `mean_segmentation_accuracy(y_pred, y_true, return_accuracies=True)` (note
        elf's argument order: segmentation first).
    """
    ov = compute_overlaps(y_true, y_pred) if overlaps is None else overlaps
    counts = match_counts(y_true, y_pred, thresholds, overlaps=ov)
    return SegmentationAccuracy(
        thresholds=tuple(float(t) for t in thresholds),
        n_true=ov.n_true,
        n_pred=ov.n_pred,
        tp=np.array([c.tp for c in counts], np.int64),
    )


def mean_segmentation_accuracy(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    thresholds: Sequence[float] = MSA_THRESHOLDS,
) -> float:
    """mSA of one image pair `[H, W]` (0 when neither image has an object)."""
    return segmentation_accuracy(y_true, y_pred, thresholds).msa
