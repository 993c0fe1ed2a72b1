"""Exact DETR box assignment without the dense cost matrix.

The matching cost of query ``q`` and target ``t`` is

    C[q, t] = query_cost[q] + bbox_weight * |b_q - b_t|_1 - giou_weight * GIoU(b_q, b_t)

(``query_cost`` is the class term, which with one class does not depend on ``t``). A
detector's costs are spatially local: a cell's cheap queries are the predictions that
overlap it. ``solve_certified`` therefore

1. evaluates ``C`` only on the pairs whose boxes overlap (``box_pairs.candidate_pairs``,
   on a grid of box centres),
2. solves that sparse assignment by shortest augmenting paths, which also gives dual
   variables ``u [N]``, ``v [Q]`` (``sparse_lap.solve_sparse_lap``), and
3. certifies optimality for the dense problem: every pair left out has non-negative
   reduced cost ``C[q, t] - u[t] - v[q]``. Pairs left out are disjoint boxes, for which
   ``GIoU <= 0``, so with ``h = query_cost - v`` their reduced cost is at least
   ``h[q] - u[t] + bbox_weight * L1 + giou_weight * (-GIoU)``: only queries with
   ``h[q] < u[t]`` can fail, and only within a distance of ``t`` that the two box terms
   bound. Those few pairs are evaluated exactly.

Pairs that fail the certificate join the sparse problem and it is solved again (as do
all pairs of a target that the sparse pairs cannot place); when
rounds or the evaluated pairs grow too large, the dense problem is solved instead. The
result is the dense optimum either way (up to float64 rounding, bounded by ``tolerance``
per target). The loops are compiled with numba and release the GIL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit
from scipy.optimize import linear_sum_assignment

from cellsam.models.finder.box_pairs import QueryGrid, candidate_pairs, pair_cost, pair_costs
from cellsam.models.finder.sparse_lap import solve_sparse_lap

__all__ = ["BoxMatchingCosts", "CertifiedAssignment", "solve_certified", "solve_dense"]


@dataclass(frozen=True)
class BoxMatchingCosts:
    """One image's matching problem, float64, boxes cxcywh.

    Attributes:
        query_cost: ``[Q]`` class term of each query.
        query_boxes: ``[Q, 4]`` predicted boxes.
        target_boxes: ``[N, 4]`` target boxes.
        bbox_weight: weight of the L1 box distance.
        giou_weight: weight of ``-GIoU``.
    """

    query_cost: np.ndarray
    query_boxes: np.ndarray
    target_boxes: np.ndarray
    bbox_weight: float
    giou_weight: float

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.query_boxes), len(self.target_boxes)

    def pairs(self, queries: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """``C[queries[i], targets[i]]`` for index arrays ``[P]`` -> ``[P]``."""
        return pair_costs(self.query_cost, self.query_boxes, self.target_boxes,
                          np.asarray(queries, np.int64), np.asarray(targets, np.int64),
                          float(self.bbox_weight), float(self.giou_weight))

    def dense(self) -> np.ndarray:
        """The full ``[Q, N]`` cost matrix (the dense solver's input; ``pairs`` gives the
        same values)."""
        a, b = self.query_boxes, self.target_boxes
        cost = np.abs(a[:, None, 0] - b[None, :, 0])
        for i in (1, 2, 3):
            cost += np.abs(a[:, None, i] - b[None, :, i])
        cost *= self.bbox_weight
        cost += self.query_cost[:, None]
        if self.giou_weight:
            # [Q, 1] against [1, N] coordinate planes: contiguous [Q, N] temporaries.
            cost -= self.giou_weight * _paired_giou(a[:, None, :], b[None, :, :])
        return cost


def _paired_giou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """GIoU of cxcywh boxes ``[..., 4]`` broadcast against each other -> ``[...]`` (the
    formula of ``cellsam.ops.boxes.generalized_box_iou``)."""
    half_a, half_b = 0.5 * a[..., 2:], 0.5 * b[..., 2:]
    extent = []
    for i in (0, 1):  # x then y: intersection and enclosing extents
        a0, a1 = a[..., i] - half_a[..., i], a[..., i] + half_a[..., i]
        b0, b1 = b[..., i] - half_b[..., i], b[..., i] + half_b[..., i]
        lo, hi = np.maximum(a0, b0), np.minimum(a1, b1)
        extent.append((np.maximum(hi - lo, 0.0), np.maximum(a1, b1) - np.minimum(a0, b0)))
    inter = extent[0][0] * extent[1][0]
    union = (a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3]) - inter
    enclosing = extent[0][1] * extent[1][1]
    return inter / union - (enclosing - union) / enclosing


@dataclass
class CertifiedAssignment:
    """Result of ``solve_certified``.

    Attributes:
        queries: ``[N]`` the query assigned to each target.
        certified: True when the sparse optimum was proven optimal; False when the dense
            problem was solved instead.
        rounds: sparse solves made.
        evaluated: cost entries evaluated (sparse problem plus certificate checks).
    """

    queries: np.ndarray
    certified: bool
    rounds: int
    evaluated: int


def solve_dense(costs: BoxMatchingCosts) -> np.ndarray:
    """``[N]`` query of each target, by ``linear_sum_assignment`` on the dense matrix."""
    matrix = costs.dense()
    _check_finite(matrix)
    rows, cols = linear_sum_assignment(matrix)
    queries = np.empty(len(cols), dtype=np.int64)
    queries[cols] = rows
    return queries


def _check_finite(values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        raise ValueError("non-finite matching cost (NaN/inf predictions or zero-area boxes)")


def solve_certified(
    costs: BoxMatchingCosts,
    max_rounds: int = 4,
    max_sparse_fraction: float = 0.2,
    tolerance: float = 1e-9,
) -> CertifiedAssignment:
    """Optimal assignment of every target to a distinct query (see the module docstring).

    Args:
        costs: the problem; needs ``bbox_weight > 0`` and ``giou_weight >= 0`` for the
            bounds (else the dense problem is solved).
        max_rounds: sparse solves before falling back to the dense problem.
        max_sparse_fraction: fall back when the evaluated entries exceed this share of
            ``Q x N`` (then costs are not local and the dense solver is faster).
        tolerance: reduced costs above ``-tolerance`` count as non-negative.

    Raises:
        ValueError: a cost is not finite.
    """
    num_queries, num_targets = costs.shape
    if num_targets == 0:
        return CertifiedAssignment(np.zeros(0, np.int64), True, 0, 0)
    dense_entries = num_queries * num_targets
    if costs.bbox_weight <= 0 or costs.giou_weight < 0 or num_queries <= num_targets:
        return CertifiedAssignment(solve_dense(costs), False, 0, dense_entries)
    for values in (costs.query_cost, costs.query_boxes, costs.target_boxes):
        _check_finite(values)  # before the grid, which would misplace them silently
    w, g = float(costs.bbox_weight), float(costs.giou_weight)
    grid = QueryGrid.build(costs.query_boxes, costs.target_boxes)
    start, queries, values = candidate_pairs(costs.query_cost, costs.query_boxes,
                                             costs.target_boxes, w, g, grid)
    _check_finite(values)
    evaluated = len(values)
    # Tiny problems may evaluate everything: the dense solver would not be faster.
    budget = max(max_sparse_fraction * dense_entries, min(dense_entries, 4096))
    rounds = 0
    while rounds < max_rounds and evaluated <= budget:
        rounds += 1
        failed, assigned, u, v = solve_sparse_lap(num_targets, num_queries, start, queries,
                                                  values)
        if failed.size:
            # The pairs admit no full matching: these targets may go anywhere.
            add_t = np.repeat(np.sort(failed), num_queries)
            add_q = np.tile(np.arange(num_queries, dtype=np.int64), failed.size)
            add_values = costs.pairs(add_q, add_t)
        else:
            add_t, add_q, add_values, checked, complete = _violations(
                costs.query_cost, costs.query_boxes, costs.target_boxes, w, g, grid.lo[0],
                grid.lo[1], grid.side, grid.cells, grid.order, grid.first, grid.half, u, v,
                tolerance, int(budget) - evaluated)
            evaluated += checked
            if not complete:
                break
            if add_t.size == 0:
                return CertifiedAssignment(assigned, True, rounds, evaluated)
        _check_finite(add_values)
        evaluated += add_values.size
        start, queries, values = _merge(start, queries, values, add_t, add_q, add_values)
    return CertifiedAssignment(solve_dense(costs), False, rounds, evaluated + dense_entries)


@njit(cache=True, nogil=True)
def _merge(start, queries, values, add_t, add_q, add_values):
    """CSR pairs plus pairs sorted by target -> the merged CSR (a pair listed twice is
    harmless to the solver)."""
    num_targets = len(start) - 1
    out_start = np.zeros(num_targets + 1, np.int64)
    out_q = np.empty(len(queries) + len(add_q), np.int64)
    out_v = np.empty(len(out_q))
    size, a = 0, 0
    for t in range(num_targets):
        for p in range(start[t], start[t + 1]):
            out_q[size], out_v[size] = queries[p], values[p]
            size += 1
        while a < len(add_t) and add_t[a] == t:
            out_q[size], out_v[size] = add_q[a], add_values[a]
            size += 1
            a += 1
        out_start[t + 1] = size
    return out_start, out_q, out_v


@njit(cache=True, nogil=True)
def _clearing_radius(gap, w, g, half):
    """Chebyshev centre distance beyond which ``w * L1 + g * (-GIoU) >= gap`` for every
    pair of disjoint boxes: with centres ``D >= half`` apart along x (or y), ``L1 >= D``
    and ``-GIoU >= (D - half) / (D + half)`` (``half`` bounds half the two sides summed).
    Positive root of ``w r^2 + (w half + g - gap) r - (g + gap) half = 0``, at least half."""
    b = w * half + g - gap
    root = (-b + math.sqrt(b * b + 4.0 * w * half * (g + gap))) / (2.0 * w)
    return max(root, half)


@njit(cache=True, nogil=True)
def _violations(query_cost, query_boxes, target_boxes, w, g, lo_x, lo_y, side, cells, order,
                first, half, u, v, tolerance, limit):
    """Pairs with reduced cost ``C[q, t] - u[t] - v[q] < -tolerance``: ``(targets,
    queries, costs, pairs evaluated, complete)``; ``complete`` is False when more than
    ``limit`` pairs would need an exact look.

    Pairs of the sparse problem have non-negative reduced cost (the duals are feasible
    there), and every overlapping pair and huge query is one of them. Any other pair is
    disjoint and can fail only if ``h[q] < u[t]`` (``h = query_cost - v``) and its centres
    lie within ``_clearing_radius(u[t] - min h)`` of each other; grid cells are skipped
    when their smallest ``h`` plus the bound at their distance clears ``u[t]``.
    """
    num_cells = cells * cells
    h = query_cost - v
    cell_min = np.full(num_cells, np.inf)
    lowest = np.inf
    for k in range(num_cells):
        for p in range(first[k], first[k + 1]):
            cell_min[k] = min(cell_min[k], h[order[p]])
        lowest = min(lowest, cell_min[k])
    capacity = 64
    out_t = np.empty(capacity, np.int64)
    out_q = np.empty(capacity, np.int64)
    out_c = np.empty(capacity)
    found, checked = 0, 0
    for t in range(len(target_boxes)):
        top = u[t] + tolerance  # a pair can fail only below this
        if lowest >= top:
            continue
        tx, ty = target_boxes[t, 0], target_boxes[t, 1]
        radius = _clearing_radius(top - lowest, w, g, half)
        span = min(int(math.ceil(radius / side)), cells)
        cx = min(int((tx - lo_x) / side), cells - 1)
        cy = min(int((ty - lo_y) / side), cells - 1)
        for ix in range(max(cx - span, 0), min(cx + span, cells - 1) + 1):
            dx = max(lo_x + ix * side - tx, tx - (lo_x + (ix + 1) * side), 0.0)
            for iy in range(max(cy - span, 0), min(cy + span, cells - 1) + 1):
                k = ix * cells + iy
                if cell_min[k] >= top:
                    continue
                dy = max(lo_y + iy * side - ty, ty - (lo_y + (iy + 1) * side), 0.0)
                near = max(dx, dy)
                bound = w * near
                if near > half:
                    bound += g * (near - half) / (near + half)
                if cell_min[k] + bound >= top:
                    continue
                for p in range(first[k], first[k + 1]):
                    q = order[p]
                    if h[q] >= top:
                        continue
                    checked += 1
                    if checked > limit:
                        return out_t[:0], out_q[:0], out_c[:0], checked, False
                    cost = pair_cost(query_cost, query_boxes, target_boxes, q, t, w, g)
                    if cost - u[t] - v[q] < -tolerance:
                        if found == capacity:
                            capacity *= 2
                            out_t = _resized(out_t, capacity)
                            out_q = _resized(out_q, capacity)
                            out_c = _resized(out_c, capacity)
                        out_t[found], out_q[found], out_c[found] = t, q, cost
                        found += 1
    return out_t[:found], out_q[:found], out_c[:found], checked, True


@njit(cache=True, nogil=True)
def _resized(values, capacity):
    out = np.empty(capacity, values.dtype)
    out[: len(values)] = values
    return out
