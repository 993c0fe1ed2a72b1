"""Exact DETR box assignment without the dense cost matrix.

The matching cost of query ``q`` and target ``t`` is

    C[q, t] = query_cost[q] + bbox_weight * |b_q - b_t|_1 - giou_weight * GIoU(b_q, b_t)

(``query_cost`` is the class term, which with one class does not depend on ``t``). A
detector's costs are spatially local: a cell's cheap queries are the predictions that
overlap it. ``solve_certified`` therefore

1. evaluates ``C`` only on the pairs whose boxes overlap plus each target's few nearest
   queries (a k-d tree on the box centres finds them),
2. solves that sparse assignment (``scipy.sparse.csgraph.min_weight_full_bipartite_matching``),
3. computes dual variables ``u [N]``, ``v [Q]`` of the sparse optimum (largest ``u``
   through shortest paths on the difference constraints of complementary slackness), and
4. certifies optimality for the dense problem: every pair left out has non-negative
   reduced cost ``C[q, t] - u[t] - v[q]``. Pairs left out are disjoint boxes, for which
   ``GIoU <= 0``, so ``C >= query_cost[q] + bbox_weight * |b_q - b_t|_1``; a second k-d
   tree, over ``(b_q, (query_cost[q] - v[q]) / bbox_weight)``, finds in one L1 ball per
   target every pair this bound cannot clear, and only those are evaluated exactly.

Pairs that fail the certificate join the sparse problem and it is solved again; when
rounds or the sparse problem grow too large, the dense problem is solved instead. The
result is the dense optimum either way (up to float64 rounding of the duals, bounded by
``tolerance`` per target).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

from cellsam.models.finder.box_pairs import grid_neighbours, local_pairs, nearest_pairs

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
        a, b = self.query_boxes[queries], self.target_boxes[targets]
        diff = np.abs(a - b)
        # Column sums, not .sum(axis=1): numpy's reductions over rows of 4 are slow.
        l1 = diff[:, 0] + diff[:, 1] + diff[:, 2] + diff[:, 3]
        cost = self.query_cost[queries] + self.bbox_weight * l1
        if self.giou_weight:
            cost -= self.giou_weight * _paired_giou(a, b)
        return cost

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
    neighbours: int = 4,
    max_rounds: int = 4,
    max_sparse_fraction: float = 0.2,
    tolerance: float = 1e-9,
) -> CertifiedAssignment:
    """Optimal assignment of every target to a distinct query (see the module docstring).

    Args:
        costs: the problem; needs ``bbox_weight > 0`` and ``giou_weight >= 0`` for the
            bounds (else the dense problem is solved).
        neighbours: nearest queries (L1 over cxcywh) added for each target beside the
            overlapping ones (doubled while the sparse problem has no full matching).
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
        _check_finite(values)  # before the k-d trees, which would reject them obscurely
    targets, queries = local_pairs(costs.query_boxes, costs.target_boxes, neighbours)
    values = costs.pairs(queries, targets)
    _check_finite(values)
    evaluated = len(values)
    # Tiny problems may evaluate everything: the dense solver would not be faster.
    budget = max(max_sparse_fraction * dense_entries, min(dense_entries, 4096))
    rounds = 0
    while rounds < max_rounds and evaluated <= budget:
        rounds += 1
        assigned = _solve_sparse(num_targets, num_queries, targets, queries, values)
        if assigned is None:
            # No full matching among these pairs: add each target's nearest queries.
            neighbours = 2 * max(neighbours, 2)
            add_t, add_q = nearest_pairs(costs.query_boxes, costs.target_boxes, neighbours)
        elif (duals := _duals(num_targets, num_queries, targets, queries, values,
                              assigned)) is None:
            break
        elif not np.isfinite(duals[0]).all():
            # A target reaches no unmatched query through the sparse pairs: give it some.
            add_t, add_q = _nearest_unmatched(costs, np.flatnonzero(~np.isfinite(duals[0])),
                                              assigned)
        else:
            limit = int(budget) - evaluated
            found = _certificate_violations(costs, *duals, tolerance, limit)
            if found is None:
                break
            add_t, add_q, checked = found
            evaluated += checked
            if add_t.size == 0:
                return CertifiedAssignment(assigned, True, rounds, evaluated)
        # Pairs already listed would be summed in the sparse matrix: add only new ones.
        known = np.isin(add_t * num_queries + add_q, targets * num_queries + queries)
        add_t, add_q = add_t[~known], add_q[~known]
        add_values = costs.pairs(add_q, add_t)
        _check_finite(add_values)
        order = np.argsort(np.concatenate((targets, add_t)), kind="stable")
        targets = np.concatenate((targets, add_t))[order]
        queries = np.concatenate((queries, add_q))[order]
        values = np.concatenate((values, add_values))[order]
        evaluated += add_values.size
    return CertifiedAssignment(solve_dense(costs), False, rounds, evaluated + dense_entries)


def _solve_sparse(
    num_targets: int, num_queries: int, targets: np.ndarray, queries: np.ndarray,
    values: np.ndarray,
) -> np.ndarray | None:
    """``[N]`` query of each target minimising the cost over the given pairs, or None
    when they admit no full matching."""
    # Shift each target's costs to >= 1: every target is matched once, so the optimum is
    # unchanged, and no weight is an explicit zero, which a sparse matrix would drop.
    starts = np.searchsorted(targets, np.arange(num_targets + 1))  # pairs grouped by target
    present = starts[:-1] < starts[1:]
    if not present.all():
        return None
    row_min = np.minimum.reduceat(values, starts[:-1])
    graph = csr_matrix((values - np.repeat(row_min, np.diff(starts)) + 1.0, queries, starts),
                       shape=(num_targets, num_queries))
    try:
        rows, cols = min_weight_full_bipartite_matching(graph)
    except ValueError:
        return None
    assigned = np.empty(num_targets, dtype=np.int64)
    assigned[rows] = cols
    return assigned


def _duals(
    num_targets: int, num_queries: int, targets: np.ndarray, queries: np.ndarray,
    values: np.ndarray, assigned: np.ndarray,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Duals ``(u [N], v [Q])`` proving ``assigned`` optimal on the given pairs.

    LP of the rectangular assignment: every target matched once, every query at most once,
    so ``v <= 0`` and ``v = 0`` on unmatched queries. With ``v[assigned[t]] = C_t - u[t]``
    (``C_t`` the cost of ``t``'s own pair), the remaining constraints are differences of
    ``u`` only:

    - pair ``(q, t)`` with ``q`` assigned to ``s``: ``u[t] - u[s] <= C[q, t] - C_s``;
    - pair ``(q, t)`` with ``q`` unassigned: ``u[t] <= C[q, t]``;
    - ``v <= 0``: ``-u[t] <= -C_t``.

    The largest ``u`` satisfying them is the shortest-path distance from a root node;
    large ``u`` makes ``v`` absorb each assigned query's class cost, which is what lets
    the certificate's bound clear far pairs. ``u[t]`` is inf when no path reaches ``t``;
    None on a negative cycle (not optimal on these pairs: cannot happen after an exact
    solve, but rounding is not trusted blindly).
    """
    owner = np.full(num_queries, -1, dtype=np.int64)
    owner[assigned] = np.arange(num_targets)
    holder = owner[queries]
    own = holder == targets
    own_cost = np.empty(num_targets)
    own_cost[targets[own]] = values[own]
    other = (holder >= 0) & ~own
    free = holder < 0
    # Node 0 is the root; target t is node t + 1.
    src = np.concatenate((holder[other] + 1, np.zeros(free.sum(), np.int64),
                          np.arange(1, num_targets + 1)))
    dst = np.concatenate((targets[other] + 1, targets[free] + 1,
                          np.zeros(num_targets, np.int64)))
    weight = np.concatenate((values[other] - own_cost[holder[other]], values[free], -own_cost))
    dist = _shortest_paths_from_root(num_targets + 1, src, dst, weight)
    if dist is None:
        return None
    u = dist[1:]
    v = np.zeros(num_queries)
    v[assigned] = own_cost - u
    return u, v


def _shortest_paths_from_root(
    num_nodes: int, src: np.ndarray, dst: np.ndarray, weight: np.ndarray
) -> np.ndarray | None:
    """Bellman-Ford from node 0, all edges relaxed at once per sweep; stops when nothing
    changes (sweeps = edges on the longest shortest path, a handful here, where scipy's
    ``bellman_ford`` always makes ``num_nodes`` of them). None on a negative cycle."""
    order = np.argsort(dst, kind="stable")
    src, dst, weight = src[order], dst[order], weight[order]
    starts = np.flatnonzero(np.r_[True, dst[1:] != dst[:-1]])
    heads = dst[starts]
    dist = np.full(num_nodes, np.inf)
    dist[0] = 0.0
    for _ in range(num_nodes + 1):
        best = np.minimum.reduceat(dist[src] + weight, starts)
        better = best < dist[heads]
        if not better.any():
            return dist
        dist[heads[better]] = best[better]
    return None


def _nearest_unmatched(
    costs: BoxMatchingCosts, targets: np.ndarray, assigned: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of each given target with its 4 nearest unassigned queries."""
    free = np.setdiff1d(np.arange(costs.shape[0]), assigned)
    k = min(4, free.size)
    _, nearest = cKDTree(costs.query_boxes[free]).query(costs.target_boxes[targets], k=k, p=1)
    return np.repeat(targets, k), free[nearest.reshape(-1)]


def _certificate_violations(
    costs: BoxMatchingCosts, u: np.ndarray, v: np.ndarray, tolerance: float, limit: int
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Pairs with negative reduced cost ``C[q, t] - u[t] - v[q]``: ``(targets, queries,
    number of pairs evaluated exactly)``, or None when more than ``limit`` pairs would need
    an exact look.

    Pairs of the sparse problem have non-negative reduced cost by construction. Every other
    pair is disjoint, so with ``h = query_cost - v`` its reduced cost is at least
    ``h[q] - u[t] + w * L1 + g * (-GIoU)`` (``w``, ``g`` the box weights, both terms
    >= 0): only queries with ``h[q] < u[t]`` can fail. When the centres are ``D >= s/2``
    apart along x (or y), ``L1 >= D`` and ``-GIoU >= (D - s/2) / (D + s/2)``, where ``s``
    bounds the two boxes' widths (heights) summed. So for queries with ``h >= H`` only
    pairs closer than the ``rho`` at which ``w * rho + g * (rho - s/2) / (rho + s/2) =
    u[t] - H`` can fail. Queries are taken in bands of ``h`` (confident queries, low
    ``h``, are searched farther than the rest), each target's square of side ``2 rho``
    is searched on a grid, and the pairs found are evaluated exactly.
    """
    qb, tb = costs.query_boxes, costs.target_boxes
    h = costs.query_cost - v
    active = np.flatnonzero(h < u.max() + tolerance)
    empty = np.zeros(0, np.int64)
    if active.size == 0:
        return empty, empty, 0
    half = 0.5 * (qb[:, 2:].max(axis=0) + tb[:, 2:].max(axis=0)).max()
    w, g = costs.bbox_weight, costs.giou_weight
    found_t, found_q = [], []
    total = 0
    # Bands of h between H and max u; within a band, its lower edge bounds h.
    edges = h.min() + (u.max() - h.min()) * np.linspace(0.0, 1.0, _H_BANDS + 1)[:-1]
    band_of = np.searchsorted(edges, h[active], side="right") - 1
    for k, floor in enumerate(edges):
        band = active[band_of == k]
        if band.size == 0:
            continue
        gap = u - floor + tolerance
        suspects = np.flatnonzero(gap > 0)
        if suspects.size == 0:
            continue
        # Positive root of w rho^2 + (w s/2 + g - d) rho - (g + d) s/2 = 0, at least s/2.
        d = gap[suspects]
        b = w * half + g - d
        rho = np.maximum((-b + np.sqrt(b * b + 4 * w * half * (g + d))) / (2 * w), half)
        near = grid_neighbours(tb[suspects, :2], qb[band, :2], rho, limit - total)
        if near is None:
            return None
        i, j = near
        q = band[j]
        tq, r = suspects[i], rho[i]
        keep = (np.abs(qb[q, 0] - tb[tq, 0]) <= r) & (np.abs(qb[q, 1] - tb[tq, 1]) <= r)
        found_t.append(suspects[i[keep]])
        found_q.append(q[keep])
        total += int(keep.sum())
    if not found_t:
        return empty, empty, 0
    t, q = np.concatenate(found_t), np.concatenate(found_q)
    reduced = costs.pairs(q, t) - u[t] - v[q]
    bad = reduced < -tolerance
    return t[bad], q[bad], t.size


_H_BANDS = 4
