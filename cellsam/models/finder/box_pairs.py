"""Candidate (target, query) box pairs for the sparse assignment: every pair whose boxes
may overlap (a uniform grid over the centres), and each target's nearest queries."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["grid_neighbours", "local_pairs", "nearest_pairs", "overlapping"]

# Pairs closer than this to touching count as overlapping, so that rounding in the
# xyxy conversion can never give a pair judged disjoint a positive GIoU.
_OVERLAP_MARGIN = 1e-9


def overlapping(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether cxcywh pairs ``[P, 4] x [P, 4]`` may overlap -> ``[P]`` bool."""
    reach = 0.5 * (a[:, 2:] + b[:, 2:]) + _OVERLAP_MARGIN
    return ((np.abs(a[:, 0] - b[:, 0]) < reach[:, 0])
            & (np.abs(a[:, 1] - b[:, 1]) < reach[:, 1]))


def local_pairs(
    query_boxes: np.ndarray, target_boxes: np.ndarray, neighbours: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every (target, query) pair whose boxes may overlap, plus each target's
    ``neighbours`` nearest queries (L1 over cxcywh; they give targets without a good
    overlapping query an alternative, which saves a round), grouped by target and no pair
    twice: ``(targets [P], queries [P])``. Overlapping centres are closer than half the two
    sides, so a grid of cells that wide holds each such pair in neighbouring cells."""
    qb, tb = query_boxes, target_boxes
    num_targets = len(tb)
    target_side = tb[:, 2:].max()
    # A few huge predicted boxes would widen every cell: pair them with every target.
    huge = qb[:, 2:].max(axis=1) > 4 * target_side
    normal = np.flatnonzero(~huge)
    parts_t, parts_q = [], []
    if normal.size:
        reach = 0.5 * (target_side + qb[normal, 2:].max()) + 2 * _OVERLAP_MARGIN
        t, q = grid_neighbours(tb[:, :2], qb[normal, :2], reach)
        q = normal[q]
        keep = overlapping(qb[q], tb[t])
        parts_t.append(t[keep])
        parts_q.append(q[keep])
    huge_idx = np.flatnonzero(huge)
    if huge_idx.size:
        parts_t.append(np.repeat(np.arange(num_targets), huge_idx.size))
        parts_q.append(np.tile(huge_idx, num_targets))
    if neighbours:
        t, q = nearest_pairs(qb, tb, neighbours)
        new = ~huge[q] & ~overlapping(qb[q], tb[t])  # the others are listed already
        parts_t.append(t[new])
        parts_q.append(q[new])
    targets, queries = np.concatenate(parts_t), np.concatenate(parts_q)
    order = np.argsort(targets, kind="stable")
    return targets[order], queries[order]


_MAX_GRID = 128  # cells per side


def grid_neighbours(
    points: np.ndarray, others: np.ndarray, reach: float | np.ndarray, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Every ``(i, j)`` with ``max |points[i] - others[j]| <= reach[i]`` (and some more, up
    to a grid cell farther), grouped by ``i``; None when there would be more than
    ``limit`` pairs. A uniform grid over ``others`` sorted by (column, row) makes each
    column of a point's square one contiguous slice: no tree to build per image."""
    reach = np.broadcast_to(np.asarray(reach, dtype=np.float64), (len(points),))
    lo = np.minimum(points.min(axis=0), others.min(axis=0))
    extent = (np.maximum(points.max(axis=0), others.max(axis=0)) - lo).max()
    side = max(reach.min(), extent / _MAX_GRID, 1e-12)
    cells = int(extent / side) + 1

    def cell_of(xy: np.ndarray) -> np.ndarray:
        return np.minimum(((xy - lo) / side).astype(np.int64), cells - 1)

    other_cell = cell_of(others)
    order = np.argsort(other_cell[:, 0] * cells + other_cell[:, 1], kind="stable")
    count = np.bincount(other_cell[:, 0] * cells + other_cell[:, 1], minlength=cells * cells)
    first = np.concatenate(([0], np.cumsum(count)))  # others of cell k: first[k]:first[k+1]
    point_cell = cell_of(points)
    span = np.ceil(reach / side).astype(np.int64)  # cells each way
    x_lo = np.maximum(point_cell[:, 0] - span, 0)
    x_hi = np.minimum(point_cell[:, 0] + span, cells - 1)
    y_lo = np.maximum(point_cell[:, 1] - span, 0)
    y_hi = np.minimum(point_cell[:, 1] + span, cells - 1)
    columns = x_hi - x_lo + 1
    point = np.repeat(np.arange(len(points)), columns)  # one slice per (point, column)
    column = np.arange(point.size) - np.repeat(np.cumsum(columns) - columns, columns)
    column += x_lo[point]
    begin = first[column * cells + y_lo[point]]
    n = first[column * cells + y_hi[point] + 1] - begin
    total = int(n.sum())
    if limit is not None and total > limit:
        return None
    i = np.repeat(point, n)
    offset = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    return i, order[np.repeat(begin, n) + offset]


def nearest_pairs(
    query_boxes: np.ndarray, target_boxes: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each target with its ``k`` nearest queries (L1 over cxcywh)."""
    k = min(k, len(query_boxes))
    # An unbalanced tree builds twice as fast and queries as fast at these sizes.
    tree = cKDTree(query_boxes, balanced_tree=False, compact_nodes=False)
    _, nearest = tree.query(target_boxes, k=k, p=1)
    return (np.repeat(np.arange(len(target_boxes)), k),
            nearest.reshape(-1).astype(np.int64))
