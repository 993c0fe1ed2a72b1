"""Ground-truth point prompts for training the SAC pipeline: for each chosen cell, positive
points inside it and negative points outside it (on nearby other cells and on nearby
background). Pure numpy/scipy.

Points are `(x, y)` with integers at pixel centres (pixel `[r, c]` is the point `(c, r)`),
the convention of `cellsam.labelling.prompts` and `cellsam.inference.point_prompts`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["PAD_LABEL", "sample_points"]

PAD_LABEL = -1
"""Label of a padding point (SAM's "not a point": the prompt encoder ignores its position)."""


def _window(sl: tuple[slice, slice], shape: tuple[int, ...]) -> tuple[slice, slice]:
    """The cell's bounding box grown by its larger side on every side, clipped to the
    image: where "nearby" negatives are drawn."""
    grow = max(s.stop - s.start for s in sl)
    return tuple(slice(max(0, s.start - grow), min(n, s.stop + grow)) for s, n in zip(sl, shape))


def _pick(rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """`k` of the pixels `(rows, cols)` as `[k, 2]` xy, without replacement while there are
    enough pixels, with replacement beyond."""
    if k == 0:
        return np.zeros((0, 2), np.float32)
    idx = rng.choice(len(rows), size=k, replace=k > len(rows))
    return np.stack([cols[idx], rows[idx]], axis=1).astype(np.float32)


def _centroid_pixel(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The cell's pixel nearest its centroid (the first pixel in row-major order on ties):
    the centroid of a non-convex cell may lie outside it. Returns `[2]` xy."""
    d2 = (rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2
    i = int(np.argmin(d2))
    return np.array([cols[i], rows[i]], np.float32)


def sample_points(labels: np.ndarray, cell_ids: np.ndarray, n_positive: int, n_negative: int,
                  neighbour_fraction: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Point prompts for the cells `cell_ids` of one label image.

    Per cell, `n_positive` positives then `n_negative` negatives:

    - positive 1 is the cell's pixel nearest its centroid (what centroid selection gives at
      inference); the other `n_positive - 1` are drawn uniformly from the cell's pixels
      (without replacement while the cell has enough pixels);
    - `round(neighbour_fraction * n_negative)` negatives are drawn uniformly from the
      pixels of *other* cells inside the cell's neighbourhood (its bounding box grown by its
      larger side on every side), the rest from background pixels of that neighbourhood.
      Without neighbour pixels those negatives go to background, without background in
      the neighbourhood to background anywhere in the image, then to other cells
      anywhere; a cell with nothing outside it (it fills the image) gets padding points
      `(0, 0)` with label `PAD_LABEL` (-1).

    Args:
        labels: `[H, W]` int instance labels (0 background).
        cell_ids: `[N]` ids present in `labels`.
        n_positive: P >= 1.
        n_negative: Q >= 0.
        neighbour_fraction: in [0, 1].
        rng: the only source of randomness (same rng state, same points).

    Returns:
        points `[N, P + Q, 2]` float32 `(x, y)`; point labels `[N, P + Q]` int64 (1
        positive, 0 negative, -1 padding).
    """
    labels = np.asarray(labels)
    cell_ids = np.asarray(cell_ids).reshape(-1)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"sample_points: labels must be an int [H, W] array, got "
                         f"{labels.dtype} {labels.shape}")
    if n_positive < 1 or n_negative < 0:
        raise ValueError(f"sample_points: need n_positive >= 1 and n_negative >= 0, got "
                         f"{n_positive}, {n_negative}")
    if not 0.0 <= neighbour_fraction <= 1.0:
        raise ValueError(f"sample_points: neighbour_fraction must be in [0, 1], got "
                         f"{neighbour_fraction}")
    k = n_positive + n_negative
    points = np.zeros((len(cell_ids), k, 2), np.float32)
    point_labels = np.zeros((len(cell_ids), k), np.int64)
    point_labels[:, :n_positive] = 1
    if len(cell_ids) == 0:
        return points, point_labels
    slices = ndimage.find_objects(labels, max_label=int(cell_ids.max()))
    n_neigh = math.floor(neighbour_fraction * n_negative + 0.5)
    for i, cell_id in enumerate(cell_ids.tolist()):
        sl = slices[cell_id - 1] if cell_id >= 1 else None
        if sl is None:
            raise ValueError(f"sample_points: cell id {cell_id} of cell_ids is not in labels")
        rows, cols = np.nonzero(labels[sl] == cell_id)
        rows, cols = rows + sl[0].start, cols + sl[1].start
        points[i, 0] = _centroid_pixel(rows, cols)
        points[i, 1:n_positive] = _pick(rng, rows, cols, n_positive - 1)
        if n_negative:
            points[i, n_positive:], point_labels[i, n_positive:] = _negatives(
                labels, sl, cell_id, n_negative, n_neigh, rng)
    return points, point_labels


def _negatives(labels: np.ndarray, sl: tuple[slice, slice], cell_id: int, n_negative: int,
               n_neigh: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`[Q, 2]` xy and `[Q]` labels of one cell's negatives (see `sample_points`)."""
    win = _window(sl, labels.shape)
    crop = labels[win]
    r0, c0 = win[0].start, win[1].start
    rows, cols = np.nonzero((crop > 0) & (crop != cell_id))
    neigh = (rows + r0, cols + c0)
    rows, cols = np.nonzero(crop == 0)
    back = (rows + r0, cols + c0)
    if len(back[0]) == 0:
        back = np.nonzero(labels == 0)
    if len(back[0]) == 0:
        back = np.nonzero((labels > 0) & (labels != cell_id))
    if len(neigh[0]) == 0:
        neigh = back
    out = np.zeros((n_negative, 2), np.float32)
    out_labels = np.zeros(n_negative, np.int64)
    if len(back[0]) == 0:  # the cell fills the image: nothing to point at
        out_labels[:] = PAD_LABEL
        return out, out_labels
    out[:n_neigh] = _pick(rng, *neigh, n_neigh)
    out[n_neigh:] = _pick(rng, *back, n_negative - n_neigh)
    return out, out_labels
