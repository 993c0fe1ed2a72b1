"""The box-score threshold, per-cell mask clean-up and label composition.

Everything here is numpy/scipy on single-cell mask *crops*: a cell is stored as its mask
inside a small window of the image (`Cell`), never as a full-size image, so that 1000 cells
of a large image cost memory in proportion to their own size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from cellsam.inference.settings import OVERLAP_RULES, InferenceSettings
from cellsam.ops.masks import label_dtype


# -- box scores ---------------------------------------------------------------------------------
def two_means_1d(values: np.ndarray, iterations: int = 100) -> tuple[float, float]:
    """Centres (low, high) of a 2-cluster k-means on 1-D `values` `[N]`.

    Deterministic (no random start): the centres start at the minimum and the maximum, then
    Lloyd iterations run until the split stops moving. In 1-D the optimal clusters are two
    intervals, so this converges to the split a seeded library k-means finds.
    """
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if v.size == 0:
        raise ValueError("two_means_1d needs at least one value")
    lo, hi = float(v[0]), float(v[-1])
    if lo == hi:
        return lo, hi
    for _ in range(iterations):
        split = int(np.searchsorted(v, 0.5 * (lo + hi), side="right"))
        split = min(max(split, 1), v.size - 1)  # both clusters non-empty
        new_lo, new_hi = float(v[:split].mean()), float(v[split:].mean())
        if new_lo == lo and new_hi == hi:
            break
        lo, hi = new_lo, new_hi
    return lo, hi


def score_threshold(scores: np.ndarray, settings: InferenceSettings) -> float:
    """The box-score threshold for one image's scores `[Q]` (all queries).

    With `kmeans_adjust` (released package): `0.66 * t + 0.33 * mean(centres)`, where the
    centres are those of a 2-means on the scores, so an image whose scores are all high or
    all low moves the threshold towards its own gap between cells and background.
    """
    t = float(settings.box_threshold)
    if not settings.kmeans_adjust or np.size(scores) < 2:
        return t
    lo, hi = two_means_1d(scores)
    return 0.66 * t + 0.33 * 0.5 * (lo + hi)


# -- single cells ---------------------------------------------------------------------------------
@dataclass
class Cell:
    """One predicted cell: `mask` `[h, w]` bool at image rows `y0:y0+h`, columns `x0:x0+w`.

    `logits` `[h, w]` (mask logits on the same window) is kept only for the argmax overlap
    rule; `box` is the prompt box (xyxy image pixels), `score` the box score, `iou` SAM's
    predicted IoU.
    """

    y0: int
    x0: int
    mask: np.ndarray
    score: float
    iou: float
    box: np.ndarray
    logits: np.ndarray | None = None

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """Window (y0, x0, y1, x1) of the stored crop, exclusive ends."""
        h, w = self.mask.shape
        return self.y0, self.x0, self.y0 + h, self.x0 + w

    def tighten(self) -> Cell | None:
        """The same cell with its crop cut to the mask's bounding box (None if empty)."""
        rows, cols = np.flatnonzero(self.mask.any(1)), np.flatnonzero(self.mask.any(0))
        if rows.size == 0:
            return None
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        logits = None if self.logits is None else self.logits[r0:r1, c0:c1]
        return replace(self, y0=self.y0 + int(r0), x0=self.x0 + int(c0),
                       mask=self.mask[r0:r1, c0:c1], logits=logits)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component of `mask` `[h, w]`."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(sizes.argmax())


def clean_mask(mask: np.ndarray, settings: InferenceSettings) -> np.ndarray:
    """Post-process one cell's mask `[h, w]`: keep the largest island, then fill its holes.

    Island removal first, so that a ring-shaped fragment of another cell cannot become a
    filled disc; the result is empty when under `min_area`.
    """
    if settings.remove_islands:
        mask = largest_component(mask)
    if settings.fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    if mask.sum() < settings.min_area:
        return np.zeros_like(mask)
    return mask


def postprocess_cells(cells: list[Cell], settings: InferenceSettings) -> list[Cell]:
    """Clean every cell's mask (see `clean_mask`); drop empty ones; tighten crops; then,
    with `settings.duplicate_overlap`, drop duplicates (see `suppress_duplicates`)."""
    out = []
    for cell in cells:
        cell.mask = clean_mask(cell.mask, settings)
        tight = cell.tighten()
        if tight is not None:
            out.append(tight)
    if settings.duplicate_overlap is not None:
        out = suppress_duplicates(out, settings.duplicate_overlap)
    return out


def suppress_duplicates(cells: list[Cell], max_overlap: float) -> list[Cell]:
    """Mask non-maximum suppression over cells given in decreasing priority (box score).

    A cell is dropped when its intersection with an already kept cell exceeds `max_overlap`
    times the smaller of the two areas. Intersection over the smaller area, not IoU, so that
    a fragment lying inside a whole cell counts as a duplicate of it. Only kept cells whose
    crops overlap the candidate's crop are compared (one vectorised test per cell).
    """
    if not cells:
        return []
    windows = np.array([c.bbox for c in cells])  # [N, 4] y0, x0, y1, x1
    areas = [c.area for c in cells]
    kept: list[int] = []
    for i, cell in enumerate(cells):
        duplicate = False
        if kept:
            k = np.asarray(kept)
            w, other = windows[i], windows[k]
            near = k[(other[:, 0] < w[2]) & (other[:, 2] > w[0])
                     & (other[:, 1] < w[3]) & (other[:, 3] > w[1])]
            for j in near:
                inter = _crop_intersection(cell, cells[j])
                if inter > max_overlap * min(areas[i], areas[j]):
                    duplicate = True
                    break
        if not duplicate:
            kept.append(i)
    return [cells[i] for i in kept]


def _crop_intersection(a: Cell, b: Cell) -> int:
    """Pixels shared by two cells' masks (their crops placed in the image)."""
    y0, x0 = max(a.y0, b.y0), max(a.x0, b.x0)
    y1, x1 = min(a.bbox[2], b.bbox[2]), min(a.bbox[3], b.bbox[3])
    if y1 <= y0 or x1 <= x0:
        return 0
    ma = a.mask[y0 - a.y0:y1 - a.y0, x0 - a.x0:x1 - a.x0]
    mb = b.mask[y0 - b.y0:y1 - b.y0, x0 - b.x0:x1 - b.x0]
    return int(np.count_nonzero(ma & mb))


# -- label composition -----------------------------------------------------------------------------
def compose_labels(cells: list[Cell], shape: tuple[int, int], rule: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Paint cells into one label image `[H, W]`; returns it and the kept cells' indices.

    Overlap rules: `score` paints in increasing score order (the highest score wins),
    `release` in decreasing score order (the lower-scored mask wins, as the released code);
    `argmax` gives each pixel to the covering cell with the largest mask logit (the paper's
    argmax over the cell dimension, restricted to pixels some mask covers). Cells left with
    no pixel are dropped; ids are 1..N in the order of the returned indices (input order),
    so `labels == k + 1` is cell `kept[k]`. Ties in score keep input order (stable sort).
    """
    if rule not in OVERLAP_RULES:
        raise ValueError(f"overlap rule {rule!r}: choose from {OVERLAP_RULES}")
    n = len(cells)
    owner = np.zeros(shape, dtype=np.int64)  # 1-based index into `cells`
    scores = np.array([c.score for c in cells], dtype=np.float64)
    if rule == "argmax":
        best = np.full(shape, -np.inf, dtype=np.float32)
        for i, c in enumerate(cells):
            if c.logits is None:
                raise ValueError("overlap rule 'argmax' needs per-cell mask logits")
            y0, x0, y1, x1 = c.bbox
            win_best, win_owner = best[y0:y1, x0:x1], owner[y0:y1, x0:x1]
            # strict '>' keeps the earlier cell on exact ties, so the result is order-stable
            take = c.mask & (c.logits > win_best)
            win_best[take] = c.logits[take]
            win_owner[take] = i + 1
    else:
        order = np.argsort(scores if rule == "score" else -scores, kind="stable")
        for i in order:
            c = cells[i]
            y0, x0, y1, x1 = c.bbox
            owner[y0:y1, x0:x1][c.mask] = i + 1
    present = np.zeros(n + 1, dtype=bool)
    present[np.unique(owner)] = True
    present[0] = False
    kept = np.flatnonzero(present[1:])
    lut = np.zeros(n + 1, dtype=np.int64)
    lut[kept + 1] = np.arange(1, kept.size + 1)
    return lut[owner].astype(label_dtype(kept.size)), kept
