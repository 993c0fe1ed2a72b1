"""Foreground Dice of two label images: the pixel-level overlap of "any cell" in each.

SAC reports Dice beside its object metrics (REFERENCE section 7); it scores the semantic
mask only, so it rewards covering nuclei even when touching ones are merged or split:
read it next to the object metrics (F1, DeepCell, COCO), never instead of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def foreground_overlap(y_true: np.ndarray, y_pred: np.ndarray) -> ForegroundOverlap:
    """Counts of the foregrounds (label > 0) of two label images `[H, W]` of one shape."""
    t, p = np.asarray(y_true) > 0, np.asarray(y_pred) > 0
    if t.shape != p.shape:
        raise ValueError(f"label images differ in shape: {t.shape} vs {p.shape}")
    return ForegroundOverlap(int(np.count_nonzero(t & p)),
                             int(np.count_nonzero(t)) + int(np.count_nonzero(p)))
