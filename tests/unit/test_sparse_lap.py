"""solve_sparse_lap: optimal against scipy on random sparse problems, with valid duals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from cellsam.models.finder.sparse_lap import solve_sparse_lap

_MISSING = 1e9  # a pair that is not listed, for the dense reference


def _sparse(rng: np.random.Generator, rows: int, cols: int, density: float, ties: bool):
    listed = rng.random((rows, cols)) < density
    values = rng.normal(size=(rows, cols)) * 10
    if ties:
        values = np.round(values)
    r, c = np.nonzero(listed)
    start = np.searchsorted(r, np.arange(rows + 1)).astype(np.int64)
    return np.where(listed, values, _MISSING), r, c.astype(np.int64), start


@pytest.mark.parametrize("seed", range(40))
def test_optimal_with_feasible_tight_duals(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(1, 40))
    cols = rows + int(rng.integers(0, 40))
    matrix, r, c, start = _sparse(rng, rows, cols, rng.uniform(0.3, 1.0), seed % 3 == 0)
    ref_rows, ref_cols = linear_sum_assignment(matrix)
    failed, assigned, u, v = solve_sparse_lap(rows, cols, start, c, matrix[r, c])
    if matrix[ref_rows, ref_cols].max() >= _MISSING:  # no full assignment on these pairs
        assert failed.size > 0
        return
    assert failed.size == 0
    assert len(set(assigned.tolist())) == rows
    total = matrix[np.arange(rows), assigned].sum()
    assert total == pytest.approx(matrix[ref_rows, ref_cols].sum(), abs=1e-9)
    reduced = matrix[r, c] - u[r] - v[c]
    assert reduced.min() >= -1e-9
    np.testing.assert_allclose(matrix[np.arange(rows), assigned] - u - v[assigned], 0,
                               atol=1e-9)
    assert v.max() <= 0
    assert np.all(v[np.setdiff1d(np.arange(cols), assigned)] == 0)
    assert u.sum() + v.sum() == pytest.approx(total, abs=1e-8)  # strong duality


def test_hand_made_problem() -> None:
    # rows want column 0 (costs 1 and 2); row 1's alternative costs 5, row 0's costs 3:
    # the optimum gives row 0 column 1 (1 -> 3, +2) rather than row 1 column 2 (+3).
    start = np.array([0, 2, 4])
    cols = np.array([0, 1, 0, 2])
    costs = np.array([1.0, 3.0, 2.0, 5.0])
    failed, assigned, u, v = solve_sparse_lap(2, 3, start, cols, costs)
    assert failed.size == 0 and assigned.tolist() == [1, 0]
    assert u.sum() + v.sum() == pytest.approx(5.0)


def test_rows_without_pairs_or_without_a_free_column_fail() -> None:
    failed, assigned, *_ = solve_sparse_lap(2, 3, np.array([0, 1, 1]), np.array([0]),
                                            np.array([1.0]))
    assert failed.tolist() == [1] and assigned.tolist() == [0, -1]
    # both rows can only use column 0
    failed, *_ = solve_sparse_lap(2, 3, np.array([0, 1, 2]), np.array([0, 0]),
                                  np.array([1.0, 2.0]))
    assert failed.tolist() == [1]
