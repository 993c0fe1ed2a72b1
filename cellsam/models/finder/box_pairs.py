"""Matching costs of (query, target) box pairs and the candidate pairs of the sparse
assignment: every pair whose boxes may overlap.

Queries are bucketed by box centre on a uniform grid (``QueryGrid``) whose cells are at
least as wide as two half-sides, so a target finds every query that may overlap it in the
3 x 3 cells around its own. The loops are compiled with numba (no GIL), which is what makes
the matcher fast at 3500 queries x 1000 cells: the same work as numpy passes costs several
times more in temporaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

__all__ = ["QueryGrid", "candidate_pairs", "pair_cost", "pair_costs"]

# Pairs closer than this to touching count as overlapping, so that rounding in the
# xyxy conversion can never give a pair judged disjoint a positive GIoU.
OVERLAP_MARGIN = 1e-9
_MAX_GRID = 128  # cells per side
# Predicted boxes this many times wider than the widest target are paired with every
# target instead of widening every grid cell.
_HUGE = 4.0


@njit(cache=True, nogil=True)
def _giou(acx, acy, aw, ah, bcx, bcy, bw, bh):
    """GIoU of two cxcywh boxes, the operations of ``cellsam.ops.boxes.generalized_box_iou``
    in the order of ``BoxMatchingCosts.dense`` (so both give the same float64)."""
    ha_x, ha_y, hb_x, hb_y = 0.5 * aw, 0.5 * ah, 0.5 * bw, 0.5 * bh
    a0, a1, b0, b1 = acx - ha_x, acx + ha_x, bcx - hb_x, bcx + hb_x
    inter_x = max(min(a1, b1) - max(a0, b0), 0.0)
    outer_x = max(a1, b1) - min(a0, b0)
    a0, a1, b0, b1 = acy - ha_y, acy + ha_y, bcy - hb_y, bcy + hb_y
    inter_y = max(min(a1, b1) - max(a0, b0), 0.0)
    outer_y = max(a1, b1) - min(a0, b0)
    inter = inter_x * inter_y
    union = (aw * ah + bw * bh) - inter
    enclosing = outer_x * outer_y
    return inter / union - (enclosing - union) / enclosing


@njit(cache=True, nogil=True)
def pair_cost(query_cost, query_boxes, target_boxes, q, t, bbox_weight, giou_weight):
    """``query_cost[q] + bbox_weight * L1(b_q, b_t) - giou_weight * GIoU(b_q, b_t)``."""
    acx, acy, aw, ah = query_boxes[q, 0], query_boxes[q, 1], query_boxes[q, 2], query_boxes[q, 3]
    bcx, bcy, bw, bh = (target_boxes[t, 0], target_boxes[t, 1], target_boxes[t, 2],
                        target_boxes[t, 3])
    l1 = abs(acx - bcx) + abs(acy - bcy) + abs(aw - bw) + abs(ah - bh)
    cost = query_cost[q] + bbox_weight * l1
    if giou_weight != 0.0:
        cost -= giou_weight * _giou(acx, acy, aw, ah, bcx, bcy, bw, bh)
    return cost


@njit(cache=True, nogil=True)
def pair_costs(query_cost, query_boxes, target_boxes, queries, targets, bbox_weight,
               giou_weight):
    """``[P]`` costs of the pairs ``(queries[p], targets[p])``."""
    out = np.empty(len(queries))
    for p in range(len(queries)):
        out[p] = pair_cost(query_cost, query_boxes, target_boxes, queries[p], targets[p],
                           bbox_weight, giou_weight)
    return out


@njit(cache=True, nogil=True)
def _cell(value, lo, side, cells):
    return min(int((value - lo) / side), cells - 1)


@njit(cache=True, nogil=True)
def _bucket(query_boxes, members, lo_x, lo_y, side, cells):
    """Counting sort of ``members`` by grid cell: ``(order, first)``, cell ``k`` holding
    ``order[first[k]:first[k + 1]]``."""
    first = np.zeros(cells * cells + 1, np.int64)
    cell = np.empty(len(members), np.int64)
    for m in range(len(members)):
        q = members[m]
        k = (_cell(query_boxes[q, 0], lo_x, side, cells) * cells
             + _cell(query_boxes[q, 1], lo_y, side, cells))
        cell[m] = k
        first[k + 1] += 1
    for k in range(cells * cells):
        first[k + 1] += first[k]
    fill = first[:-1].copy()
    order = np.empty(len(members), np.int64)
    for m in range(len(members)):
        order[fill[cell[m]]] = members[m]
        fill[cell[m]] += 1
    return order, first


@njit(cache=True, nogil=True)
def _grid(query_boxes, target_boxes):
    target_side = 0.0
    target_w = target_h = 0.0
    for t in range(len(target_boxes)):
        target_w = max(target_w, target_boxes[t, 2])
        target_h = max(target_h, target_boxes[t, 3])
    target_side = max(target_w, target_h)
    is_huge = np.zeros(len(query_boxes), np.bool_)
    query_w = query_h = 0.0
    lo_x = lo_y = np.inf
    hi_x = hi_y = -np.inf
    for q in range(len(query_boxes)):
        if max(query_boxes[q, 2], query_boxes[q, 3]) > _HUGE * target_side:
            is_huge[q] = True
            continue
        query_w = max(query_w, query_boxes[q, 2])
        query_h = max(query_h, query_boxes[q, 3])
        lo_x, hi_x = min(lo_x, query_boxes[q, 0]), max(hi_x, query_boxes[q, 0])
        lo_y, hi_y = min(lo_y, query_boxes[q, 1]), max(hi_y, query_boxes[q, 1])
    for t in range(len(target_boxes)):
        lo_x, hi_x = min(lo_x, target_boxes[t, 0]), max(hi_x, target_boxes[t, 0])
        lo_y, hi_y = min(lo_y, target_boxes[t, 1]), max(hi_y, target_boxes[t, 1])
    half = 0.5 * max(query_w + target_w, query_h + target_h)
    extent = max(hi_x - lo_x, hi_y - lo_y)
    side = max(half + 2 * OVERLAP_MARGIN, extent / _MAX_GRID, 1e-12)
    cells = int(extent / side) + 1
    huge = np.flatnonzero(is_huge)
    order, first = _bucket(query_boxes, np.flatnonzero(~is_huge), lo_x, lo_y, side, cells)
    return lo_x, lo_y, side, cells, order, first, huge, half


@dataclass(frozen=True)
class QueryGrid:
    """The queries of normal size bucketed by box centre (see module doc).

    Attributes:
        lo: ``(x, y)`` of the grid's corner; side: cell width; cells: cells per side.
        order, first: cell ``k`` (``ix * cells + iy``) holds ``order[first[k]:first[k+1]]``.
        huge: queries left out of the grid (boxes over ``_HUGE`` x the widest target).
        half: half the largest summed side of a grid query and a target (either axis).
    """

    lo: tuple[float, float]
    side: float
    cells: int
    order: np.ndarray
    first: np.ndarray
    huge: np.ndarray
    half: float

    @classmethod
    def build(cls, query_boxes: np.ndarray, target_boxes: np.ndarray) -> QueryGrid:
        """Cells as wide as the reach of an overlap (``half`` plus margins), at most
        ``_MAX_GRID`` per side, over the centres of the grid queries and the targets."""
        lo_x, lo_y, side, cells, order, first, huge, half = _grid(query_boxes, target_boxes)
        return cls((lo_x, lo_y), side, cells, order, first, huge, half)


@njit(cache=True, nogil=True)
def _overlapping(query_boxes, target_boxes, q, t):
    reach_x = 0.5 * (query_boxes[q, 2] + target_boxes[t, 2]) + OVERLAP_MARGIN
    reach_y = 0.5 * (query_boxes[q, 3] + target_boxes[t, 3]) + OVERLAP_MARGIN
    return (abs(query_boxes[q, 0] - target_boxes[t, 0]) < reach_x
            and abs(query_boxes[q, 1] - target_boxes[t, 1]) < reach_y)


@njit(cache=True, nogil=True)
def _grow(queries, values, size):
    if size < len(queries):
        return queries, values
    bigger_q = np.empty(2 * len(queries), np.int64)
    bigger_v = np.empty(2 * len(queries))
    bigger_q[:size] = queries[:size]
    bigger_v[:size] = values[:size]
    return bigger_q, bigger_v


@njit(cache=True, nogil=True)
def _candidate_pairs(query_cost, query_boxes, target_boxes, bbox_weight, giou_weight,
                     lo_x, lo_y, side, cells, order, first, huge):
    num_targets = len(target_boxes)
    start = np.zeros(num_targets + 1, np.int64)
    queries = np.empty(max(num_targets * (16 + len(huge)), 16), np.int64)
    values = np.empty(len(queries))
    size = 0
    for t in range(num_targets):
        cx = _cell(target_boxes[t, 0], lo_x, side, cells)
        cy = _cell(target_boxes[t, 1], lo_y, side, cells)
        for ix in range(max(cx - 1, 0), min(cx + 1, cells - 1) + 1):
            for iy in range(max(cy - 1, 0), min(cy + 1, cells - 1) + 1):
                k = ix * cells + iy
                for p in range(first[k], first[k + 1]):
                    q = order[p]
                    if _overlapping(query_boxes, target_boxes, q, t):
                        queries, values = _grow(queries, values, size)
                        queries[size] = q
                        values[size] = pair_cost(query_cost, query_boxes, target_boxes, q, t,
                                                 bbox_weight, giou_weight)
                        size += 1
        for s in range(len(huge)):
            queries, values = _grow(queries, values, size)
            queries[size] = huge[s]
            values[size] = pair_cost(query_cost, query_boxes, target_boxes, huge[s], t,
                                     bbox_weight, giou_weight)
            size += 1
        start[t + 1] = size
    return start, queries[:size], values[:size]


def candidate_pairs(query_cost: np.ndarray, query_boxes: np.ndarray, target_boxes: np.ndarray,
                    bbox_weight: float, giou_weight: float, grid: QueryGrid
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sparse problem's first pairs in CSR form by target: ``(start [N + 1], queries
    [P], costs [P])``: each target with every query whose box may overlap its own (centres
    closer than half the two sides plus ``OVERLAP_MARGIN`` on both axes, so every pair with
    a positive GIoU is among them; the grid's cells are that wide, so they lie in the 3 x 3
    cells around the target's) and with every huge query (``QueryGrid.huge``)."""
    return _candidate_pairs(query_cost, query_boxes, target_boxes, float(bbox_weight),
                            float(giou_weight), grid.lo[0], grid.lo[1], grid.side, grid.cells,
                            grid.order, grid.first, grid.huge)
