"""Foreground Dice of two label images: the pixel-level overlap of "any cell" in each.

SAC reports Dice beside its object metrics (REFERENCE section 7); it scores the semantic
mask only, so it rewards covering nuclei even when touching ones are merged or split:
read it next to the object metrics (F1, DeepCell, COCO), never instead of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .matching import Overlaps, compute_overlaps

__all__ = ["ForegroundOverlap", "foreground_overlap"]


@dataclass(frozen=True)
class ForegroundOverlap:
    """Foreground pixel counts of one image pair: `inter` = |T & P|, `total` = |T| + |P|."""

    inter: int
    total: int

    @property
    def dice(self) -> float:
        """2 |T & P| / (|T| + |P|); 1 when neither image has foreground (nothing to miss)."""
        return 2.0 * self.inter / self.total if self.total else 1.0


def foreground_overlap(y_true: np.ndarray, y_pred: np.ndarray,
                       overlaps: Overlaps | None = None) -> ForegroundOverlap:
    """Counts of the foregrounds (label > 0) of two label images `[H, W]` of one shape.

    Each pixel where both images are foreground lies in exactly one (true, pred) pair, so
    |T & P| is the sum of the pair intersections and |T|, |P| the sums of the object areas.

    Args:
        overlaps: precomputed `compute_overlaps(y_true, y_pred)` to reuse.
    """
    ov = compute_overlaps(y_true, y_pred) if overlaps is None else overlaps
    return ForegroundOverlap(int(ov.intersections.sum()),
                             int(ov.true_areas.sum()) + int(ov.pred_areas.sum()))
