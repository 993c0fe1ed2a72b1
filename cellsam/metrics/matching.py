"""Pairwise overlaps between two label images and one-to-one matching of objects.

A label image is an integer array `[H, W]`: 0 is background, every positive value one
object. Ids need not be contiguous; they are relabelled internally and the original ids
are returned next to every per-object array.

All pairwise intersections come from ONE pass over the pixels (a histogram of the joint
(true, pred) index of every pixel where both images have an object), so the cost is
O(H*W) plus the number of overlapping pairs, not O(n_true * n_pred * H * W) as with one
mask per object. The overlaps are kept sparse (one entry per overlapping pair); dense
`[n_true, n_pred]` matrices are built only on request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "Overlaps",
    "assign_one_to_one",
    "bipartite_components",
    "compute_overlaps",
    "iou_matrix",
    "match_pairs",
    "max_weight_matching",
    "relabel",
]


def relabel(label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map the objects of `label` `[H, W]` to 1..n (0 stays background).

    Returns `(dense [H*W] int64 with values 0..n, ids [n] original ids in increasing
    order, areas [n] pixel counts)`.
    """
    flat = np.asarray(label).ravel()
    if flat.size == 0:
        return flat.astype(np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not np.issubdtype(flat.dtype, np.integer):
        if not np.all(np.mod(flat, 1) == 0):
            raise ValueError("label image must hold integer ids")
        flat = flat.astype(np.int64)
    lo, hi = int(flat.min()), int(flat.max())
    if lo < 0:
        raise ValueError("label ids must be >= 0 (0 = background)")
    if flat.dtype.itemsize == 8 and flat.dtype.kind == "u":
        if hi >= 2**63:
            raise ValueError("label ids must be < 2**63")
        flat = flat.astype(np.int64)  # bincount / indexing need a signed type
    if hi <= 4 * flat.size + 1024:
        # Ids are small enough for a histogram + lookup table: O(H*W), no sort.
        counts = np.bincount(flat, minlength=hi + 1)
        counts[0] = 0
        ids = np.flatnonzero(counts)
        lut = np.zeros(hi + 1, np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat], ids.astype(np.int64), counts[ids].astype(np.int64)
    # Huge sparse ids (e.g. hashes): fall back to a sort.
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if uniq[0] != 0:
        inverse = inverse + 1
        return inverse.astype(np.int64), uniq.astype(np.int64), counts.astype(np.int64)
    return inverse.astype(np.int64), uniq[1:].astype(np.int64), counts[1:].astype(np.int64)


@dataclass(frozen=True)
class Overlaps:
    """Sparse pairwise overlaps between the objects of two label images.

    Per-object arrays are indexed by the object's position in `true_ids` / `pred_ids`
    (increasing original ids); pair arrays list every (true, pred) pair sharing at least
    one pixel, sorted by (row, col).

    Attributes:
        true_ids: `[n_true]` original ids of the true objects.
        pred_ids: `[n_pred]` original ids of the predicted objects.
        true_areas: `[n_true]` pixel counts.
        pred_areas: `[n_pred]` pixel counts.
        rows: `[n_pairs]` index into `true_ids`.
        cols: `[n_pairs]` index into `pred_ids`.
        intersections: `[n_pairs]` shared pixel counts (all > 0).
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_areas: np.ndarray
    pred_areas: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    intersections: np.ndarray

    @property
    def n_true(self) -> int:
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    @property
    def unions(self) -> np.ndarray:
        """`[n_pairs]` union pixel counts."""
        return self.true_areas[self.rows] + self.pred_areas[self.cols] - self.intersections

    @property
    def iou(self) -> np.ndarray:
        """`[n_pairs]` IoU of each overlapping pair (float64, computed as inter / union)."""
        return self.intersections / self.unions

    def iou_matrix(self) -> np.ndarray:
        """Dense IoU `[n_true, n_pred]` (0 for pairs that do not touch)."""
        out = np.zeros((self.n_true, self.n_pred))
        out[self.rows, self.cols] = self.iou
        return out

    def intersection_matrix(self) -> np.ndarray:
        """Dense intersection pixel counts `[n_true, n_pred]`."""
        out = np.zeros((self.n_true, self.n_pred), np.int64)
        out[self.rows, self.cols] = self.intersections
        return out


def compute_overlaps(y_true: np.ndarray, y_pred: np.ndarray) -> Overlaps:
    """All pairwise intersections, areas and IoUs of two label images `[H, W]`.

    One pass over the pixels: the pixels where both images are foreground are binned by
    their joint (true, pred) index, in a histogram or, with many objects, a sparse matrix.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shape mismatch: y_true {y_true.shape} vs y_pred {y_pred.shape}")
    t, true_ids, true_areas = relabel(y_true)
    p, pred_ids, pred_areas = relabel(y_pred)
    both = (t > 0) & (p > 0)
    tt, pp = t[both] - 1, p[both] - 1
    n_t, n_p = true_ids.size, pred_ids.size
    if n_t * n_p <= 4 * tt.size + (1 << 20):
        counts = np.bincount(tt * n_p + pp, minlength=n_t * n_p)
        keys = np.flatnonzero(counts)
        rows, cols, inter = keys // max(n_p, 1), keys % max(n_p, 1), counts[keys]
    else:
        # Many objects: a full histogram would be huge; scipy's COO -> CSR conversion sums
        # the duplicate (row, col) entries with a counting sort, O(pixels + n_true).
        m = coo_matrix((np.ones(tt.size, np.int64), (tt, pp)), shape=(n_t, n_p)).tocsr()
        m.sum_duplicates()
        m.sort_indices()
        rows = np.repeat(np.arange(n_t), np.diff(m.indptr))
        cols, inter = m.indices, m.data
    return Overlaps(
        true_ids=true_ids,
        pred_ids=pred_ids,
        true_areas=true_areas,
        pred_areas=pred_areas,
        rows=rows.astype(np.int64),
        cols=cols.astype(np.int64),
        intersections=inter.astype(np.int64),
    )


def iou_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense IoU `[n_true, n_pred]` of two label images `[H, W]`, with `true_ids [n_true]`
    and `pred_ids [n_pred]` (the original ids of each row / column)."""
    ov = compute_overlaps(y_true, y_pred)
    return ov.iou_matrix(), ov.true_ids, ov.pred_ids


def bipartite_components(
    rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int
) -> tuple[np.ndarray, np.ndarray]:
    """Connected-component label of every row node `[n_rows]` and column node `[n_cols]`
    of the bipartite graph with edges (rows[k], cols[k])."""
    n = n_rows + n_cols
    graph = coo_matrix((np.ones(rows.size, np.int8), (rows, cols + n_rows)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    return comp[:n_rows], comp[n_rows:]


def max_weight_matching(
    rows: np.ndarray,
    cols: np.ndarray,
    weights: np.ndarray,
    n_rows: int,
    n_cols: int,
) -> np.ndarray:
    """Maximum-weight one-to-one matching on a sparse bipartite graph.

    `weights [n_edges]` are > 0. Edges that share no node with another edge are taken
    directly; only connected components with a conflict (a node of degree > 1) go to
    `linear_sum_assignment`, each on its own small dense block. Returns a boolean
    `[n_edges]` mask of the chosen edges.
    """
    chosen = np.zeros(rows.size, bool)
    if rows.size == 0:
        return chosen
    row_deg = np.bincount(rows, minlength=n_rows)
    col_deg = np.bincount(cols, minlength=n_cols)
    simple = (row_deg[rows] == 1) & (col_deg[cols] == 1)
    chosen[simple] = True
    if simple.all():
        return chosen
    hard = np.flatnonzero(~simple)
    comp_r, _ = bipartite_components(rows[hard], cols[hard], n_rows, n_cols)
    edge_comp = comp_r[rows[hard]]
    order = np.argsort(edge_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    for group in np.split(hard[order], bounds):
        r_u, r_inv = np.unique(rows[group], return_inverse=True)
        c_u, c_inv = np.unique(cols[group], return_inverse=True)
        block = np.zeros((r_u.size, c_u.size))
        block[r_inv, c_inv] = weights[group]
        ri, ci = linear_sum_assignment(block, maximize=True)
        keep = block[ri, ci] > 0
        lookup = {(a, b): e for a, b, e in zip(r_inv, c_inv, group)}
        for a, b in zip(ri[keep], ci[keep]):
            chosen[lookup[(a, b)]] = True
    return chosen


def match_pairs(overlaps: Overlaps, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of true and predicted objects counting pairs with
    IoU >= `threshold`, as Cellpose / StarDist / the NeurIPS cell-seg F1 do it.

    Their cost `-(iou >= t) - iou / (2 n_min)` makes `linear_sum_assignment` maximise the
    NUMBER of pairs at or above the threshold first (the IoU term sums to < 1) and the
    total IoU of those pairs second. Only pairs at or above the threshold can count, so
    the problem is solved on that sparse subgraph alone. For threshold > 0.5 on two label
    images that subgraph is already a matching (an IoU above 1/2 pins both objects), so
    no assignment is run at all. Returns `(rows [n_matched], cols [n_matched])`
    (indices into `overlaps.true_ids` / `overlaps.pred_ids`).
    """
    if not threshold > 0:
        raise ValueError("threshold must be > 0 (pairs that do not touch never match)")
    iou = overlaps.iou
    sel = iou >= threshold
    rows, cols, w = overlaps.rows[sel], overlaps.cols[sel], iou[sel]
    # Weight 1 + iou / (2 (n_edges + 1)): the IoU terms of any matching sum to < 1/2, so
    # one more pair always wins (count first) and total IoU only breaks ties.
    weights = 1.0 + w / (2.0 * (w.size + 1))
    chosen = max_weight_matching(rows, cols, weights, overlaps.n_true, overlaps.n_pred)
    return rows[chosen], cols[chosen]


def assign_one_to_one(
    iou: np.ndarray, threshold: float = 0.5, count_first: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one assignment on a dense IoU matrix `[n_true, n_pred]` with
    `scipy.optimize.linear_sum_assignment`, keeping pairs with IoU >= `threshold`.

    `count_first=True` (default) uses the Cellpose / StarDist cost
    `-(iou >= threshold) - iou / (2 n_min)`: maximum number of pairs at or above the
    threshold, ties broken by total IoU. `count_first=False` maximises the total IoU over
    all pairs and only then drops pairs under the threshold (can give fewer matches when
    a pair under the threshold "steals" an object). Returns `(rows, cols)` int arrays.
    """
    iou = np.asarray(iou, dtype=np.float64)
    if iou.ndim != 2:
        raise ValueError("iou must be a 2-D array [n_true, n_pred]")
    if iou.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if count_first:
        n_min = min(iou.shape)
        cost = -(iou >= threshold).astype(np.float64) - iou / (2.0 * n_min)
    else:
        cost = -iou
    rows, cols = linear_sum_assignment(cost)
    ok = iou[rows, cols] >= threshold
    return rows[ok].astype(np.int64), cols[ok].astype(np.int64)
