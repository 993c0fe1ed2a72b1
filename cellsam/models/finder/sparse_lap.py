"""Sparse rectangular assignment with its dual variables (compiled with numba).

Rows (targets) are each assigned one distinct column (query); there are at least as many
columns as rows, and only the listed (row, column) pairs may be used. The linear program

    min sum c[i, j] x[i, j]   s.t.  sum_j x[i, j] = 1,  sum_i x[i, j] <= 1,  x >= 0

has the dual  max sum u[i] + sum v[j]  s.t.  u[i] + v[j] <= c[i, j],  v[j] <= 0. This module
solves it by successive shortest augmenting paths (Dijkstra on reduced costs, as in the
Jonker-Volgenant family): every row starts at its cheapest column, and each row left over
augments along a shortest path to a free column. The potentials it keeps are the duals:

- every listed pair has reduced cost ``c[i, j] - u[i] - v[j] >= 0`` (up to rounding),
  with equality on the assigned pairs;
- ``v <= 0``, and ``v = 0`` on every column left unassigned (a column's ``v`` only
  decreases, and only while the column is assigned).

So the result is optimal on the listed pairs, and ``(u, v)`` certifies it: any other pair
with non-negative reduced cost cannot improve it (``sparse_assignment.py``). Compiled
without the GIL, so images and decoder layers can be solved in parallel threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["solve_sparse_lap"]


@njit(cache=True, nogil=True)
def _heap_push(keys: np.ndarray, items: np.ndarray, size: int, key: float, item: int) -> int:
    i = size
    keys[i], items[i] = key, item
    while i > 0:
        parent = (i - 1) >> 1
        if keys[parent] <= keys[i]:
            break
        keys[parent], keys[i] = keys[i], keys[parent]
        items[parent], items[i] = items[i], items[parent]
        i = parent
    return size + 1


@njit(cache=True, nogil=True)
def _heap_pop(keys: np.ndarray, items: np.ndarray, size: int) -> int:
    """Moves the smallest entry to index ``size - 1``; returns the new size."""
    size -= 1
    keys[0], keys[size] = keys[size], keys[0]
    items[0], items[size] = items[size], items[0]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        child = left
        if left + 1 < size and keys[left + 1] < keys[left]:
            child = left + 1
        if keys[i] <= keys[child]:
            break
        keys[i], keys[child] = keys[child], keys[i]
        items[i], items[child] = items[child], items[i]
        i = child
    return size


@njit(cache=True, nogil=True)
def _relax(i, base, start, cols, costs, u, v, dist, pred, done, touched, num_touched,
           heap_keys, heap_items, heap):
    """Dijkstra step: columns reached through row ``i`` at distance ``base`` plus the reduced
    cost. Returns the updated counts of touched columns and heap entries."""
    for e in range(start[i], start[i + 1]):
        k = cols[e]
        if done[k]:
            continue
        d = base + costs[e] - u[i] - v[k]
        if d < dist[k]:
            if dist[k] == np.inf:
                touched[num_touched] = k
                num_touched += 1
            dist[k] = d
            pred[k] = i
            heap = _heap_push(heap_keys, heap_items, heap, d, k)
    return num_touched, heap


@njit(cache=True, nogil=True)
def solve_sparse_lap(num_rows: int, num_cols: int, start: np.ndarray, cols: np.ndarray,
                     costs: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Optimal assignment on a sparse cost matrix in CSR form.

    Args:
        num_rows, num_cols: matrix shape, ``num_rows <= num_cols``.
        start: ``[num_rows + 1]`` int64, row ``i``'s pairs are ``start[i]:start[i + 1]``.
        cols: ``[P]`` int64 column of each pair (a pair listed twice is harmless).
        costs: ``[P]`` float64 finite costs.

    Returns:
        ``(failed [F], col_of_row [R], u [R], v [C])``: ``failed`` lists the rows that
        reach no free column through the listed pairs (none when the pairs admit a full
        assignment). Those rows are left unassigned (-1); the others, ``u`` and ``v`` are
        then optimal for the problem without them.
    """
    col_of_row = np.full(num_rows, -1, np.int64)
    row_of_col = np.full(num_cols, -1, np.int64)
    u = np.zeros(num_rows)
    v = np.zeros(num_cols)
    free_rows = np.empty(num_rows, np.int64)
    failed = np.empty(num_rows, np.int64)
    num_free = num_failed = 0
    # Every row at its cheapest column (v = 0 throughout): conflicts are left free.
    for i in range(num_rows):
        best, best_col = np.inf, -1
        for e in range(start[i], start[i + 1]):
            if costs[e] < best:
                best, best_col = costs[e], cols[e]
        if best_col < 0:
            failed[num_failed] = i
            num_failed += 1
            continue
        u[i] = best
        if row_of_col[best_col] < 0:
            row_of_col[best_col] = i
            col_of_row[i] = best_col
        else:
            free_rows[num_free] = i
            num_free += 1

    dist = np.full(num_cols, np.inf)
    pred = np.empty(num_cols, np.int64)  # row from which a column was reached
    done = np.zeros(num_cols, np.bool_)
    touched = np.empty(num_cols, np.int64)
    scanned = np.empty(num_cols, np.int64)
    capacity = len(cols) + 1
    heap_keys = np.empty(capacity)
    heap_items = np.empty(capacity, np.int64)
    for f in range(num_free):
        root = free_rows[f]
        num_scanned = 0
        num_touched, heap = _relax(root, 0.0, start, cols, costs, u, v, dist, pred, done,
                                   touched, 0, heap_keys, heap_items, 0)
        sink, length = -1, 0.0
        while heap > 0:
            heap = _heap_pop(heap_keys, heap_items, heap)
            d, j = heap_keys[heap], heap_items[heap]
            if done[j] or d > dist[j]:
                continue
            if row_of_col[j] < 0:
                sink, length = j, d
                break
            done[j] = True
            scanned[num_scanned] = j
            num_scanned += 1
            num_touched, heap = _relax(row_of_col[j], d, start, cols, costs, u, v, dist, pred,
                                       done, touched, num_touched, heap_keys, heap_items, heap)
        if sink < 0:  # no potentials changed: the other rows go on as without it
            failed[num_failed] = root
            num_failed += 1
            for s in range(num_touched):
                dist[touched[s]] = np.inf
                done[touched[s]] = False
            continue
        # Potentials: scanned columns and their rows move by length - dist, the root by
        # length; this keeps reduced costs >= 0 and zeroes them along the path.
        u[root] += length
        for s in range(num_scanned):
            j = scanned[s]
            step = length - dist[j]
            v[j] -= step
            u[row_of_col[j]] += step
        j = sink
        while True:
            i = pred[j]
            row_of_col[j] = i
            previous = col_of_row[i]
            col_of_row[i] = j
            if i == root:
                break
            j = previous
        for s in range(num_touched):
            j = touched[s]
            dist[j] = np.inf
            done[j] = False
    return failed[:num_failed], col_of_row, u, v
