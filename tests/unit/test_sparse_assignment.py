"""solve_certified: exact against brute force and dense scipy, every certificate path."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from cellsam.models.finder.box_pairs import QueryGrid, candidate_pairs
from cellsam.models.finder.sparse_assignment import (
    BoxMatchingCosts,
    solve_certified,
    solve_dense,
)
from cellsam.models.finder.sparse_lap import solve_sparse_lap


def _random_problem(rng: np.random.Generator, queries: int, targets: int) -> BoxMatchingCosts:
    """Unstructured costs: boxes anywhere, class costs of random logits."""
    qb = np.column_stack((rng.random((queries, 2)), rng.random((queries, 2)) * 0.1 + 1e-3))
    tb = np.column_stack((rng.random((targets, 2)) * 0.9 + 0.05,
                          rng.random((targets, 2)) * 0.04 + 0.01))
    return BoxMatchingCosts(rng.normal(size=queries), qb, tb, 5.0, 2.0)


def _detector_like(rng: np.random.Generator, targets: int, queries: int) -> BoxMatchingCosts:
    """Local costs as a partially trained detector gives them: about three fairly
    confident queries around each cell (noisy boxes), the rest unconfident anywhere."""
    tb = np.column_stack((rng.random((targets, 2)) * 0.9 + 0.05,
                          rng.random((targets, 2)) * 0.04 + 0.01))
    near = rng.integers(0, targets, size=min(3 * targets, queries * 6 // 7))
    qb_near = tb[near] + rng.normal(size=(near.size, 4)) * [0.005, 0.005, 0.003, 0.003]
    qb_far = np.column_stack((rng.random((queries - near.size, 2)),
                              rng.random((queries - near.size, 2)) * 0.04 + 0.01))
    qb = np.vstack((qb_near, qb_far))
    qb[:, 2:] = np.abs(qb[:, 2:]) + 1e-3
    cost = np.concatenate((rng.normal(-0.3, 0.2, near.size),
                           rng.normal(1.5, 0.2, queries - near.size)))
    return BoxMatchingCosts(cost, qb, tb, 5.0, 2.0)


def _pairs(costs: BoxMatchingCosts) -> tuple[np.ndarray, np.ndarray]:
    """The sparse problem's first pairs ``(targets [P], queries [P])``, grouped by target."""
    grid = QueryGrid.build(costs.query_boxes, costs.target_boxes)
    start, queries, _ = candidate_pairs(costs.query_cost, costs.query_boxes,
                                        costs.target_boxes, 5.0, 2.0, grid)
    return np.repeat(np.arange(len(start) - 1), np.diff(start)), queries


def _total(costs: BoxMatchingCosts, queries: np.ndarray) -> float:
    assert len(set(queries.tolist())) == len(queries)  # one query per target
    return float(costs.pairs(queries, np.arange(len(queries))).sum())


def _dense_total(costs: BoxMatchingCosts) -> float:
    matrix = costs.dense()
    rows, cols = linear_sum_assignment(matrix)
    return float(matrix[rows, cols].sum())


def test_pairs_equal_the_dense_matrix_and_the_torch_formula() -> None:
    import torch

    from cellsam.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou

    costs = _random_problem(np.random.default_rng(0), 30, 7)
    dense = costs.dense()
    q, t = np.meshgrid(np.arange(30), np.arange(7), indexing="ij")
    np.testing.assert_array_equal(costs.pairs(q.ravel(), t.ravel()).reshape(30, 7), dense)
    a, b = torch.from_numpy(costs.query_boxes), torch.from_numpy(costs.target_boxes)
    giou = generalized_box_iou(box_cxcywh_to_xyxy(a), box_cxcywh_to_xyxy(b)).numpy()
    reference = costs.query_cost[:, None] + 5.0 * torch.cdist(a, b, p=1).numpy() - 2.0 * giou
    np.testing.assert_allclose(dense, reference, atol=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_optimal_against_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_targets = 1 + seed % 4
    costs = _random_problem(rng, 6, num_targets)
    result = solve_certified(costs)
    matrix = costs.dense()
    best = min(sum(matrix[q, t] for t, q in enumerate(perm))
               for perm in itertools.permutations(range(6), num_targets))
    assert _total(costs, result.queries) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("num_targets", [100, 300, 1000])
def test_detector_like_costs_are_certified_and_equal_dense(num_targets: int) -> None:
    costs = _detector_like(np.random.default_rng(num_targets), num_targets, 3500)
    result = solve_certified(costs)
    assert result.certified and result.rounds <= 3
    # The point of it: a small share of the dense matrix is ever evaluated.
    assert result.evaluated < 0.02 * 3500 * num_targets
    assert _total(costs, result.queries) == pytest.approx(_dense_total(costs), abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_unstructured_costs_equal_dense(seed: int) -> None:
    costs = _random_problem(np.random.default_rng(seed), 700, 200)
    result = solve_certified(costs)
    assert _total(costs, result.queries) == pytest.approx(_dense_total(costs), abs=1e-9)


def _far_confident_query() -> BoxMatchingCosts:
    """Target 0 overlaps query 0 only (cost -1.8), but query 1, farther and very
    confident, is cheaper still: the overlapping pairs alone give the wrong answer."""
    tb = np.array([[0.2, 0.2, 0.04, 0.04], [0.8, 0.8, 0.04, 0.04]])
    qb = np.array([[0.2, 0.2, 0.04, 0.04], [0.3, 0.2, 0.04, 0.04],
                   [0.8, 0.8, 0.04, 0.04], [0.81, 0.8, 0.04, 0.04]] + [[0.5, 0.5, 0.02, 0.02]] * 4)
    cost = np.array([0.2, -4.0, 0.0, 0.1] + [2.0] * 4)
    return BoxMatchingCosts(cost, qb, tb, 5.0, 2.0)


def test_a_failed_certificate_adds_the_pairs_and_solves_again() -> None:
    costs = _far_confident_query()
    # The sparse optimum on overlapping pairs is query 0 for target 0 ...
    targets, queries = _pairs(costs)
    assert 1 not in queries[targets == 0]
    result = solve_certified(costs)
    # ... which the certificate rejects: query 1 (-4 + 5 * 0.1 + 2 * 3/7 = -2.64) wins.
    assert result.certified and result.rounds == 2
    assert result.queries.tolist() == [1, 2]
    assert _total(costs, result.queries) == pytest.approx(_dense_total(costs), abs=1e-12)


def test_out_of_rounds_falls_back_to_the_dense_solver() -> None:
    costs = _far_confident_query()
    result = solve_certified(costs, max_rounds=1)
    assert not result.certified
    assert result.queries.tolist() == [1, 2]


def test_non_local_costs_fall_back_to_the_dense_solver() -> None:
    costs = _random_problem(np.random.default_rng(0), 300, 100)
    result = solve_certified(costs, max_sparse_fraction=0.001)
    assert not result.certified
    assert _total(costs, result.queries) == pytest.approx(_dense_total(costs), abs=1e-9)


def test_targets_the_sparse_pairs_cannot_place_get_every_query() -> None:
    # Three targets share one overlapping query: no full matching on the first pairs.
    tb = np.array([[0.5, 0.5, 0.02, 0.02], [0.51, 0.5, 0.02, 0.02], [0.52, 0.5, 0.02, 0.02]])
    grid = np.linspace(0.05, 0.95, 7)
    far = np.array([[x, y, 0.02, 0.02] for x in grid for y in grid if abs(x - 0.5) > 0.1])
    qb = np.vstack(([[0.51, 0.5, 0.02, 0.02]], far))
    costs = BoxMatchingCosts(np.zeros(len(qb)), qb, tb, 5.0, 2.0)
    targets, queries = _pairs(costs)
    assert targets.tolist() == [0, 1, 2] and queries.tolist() == [0, 0, 0]
    failed, assigned, *_ = solve_sparse_lap(3, len(qb), np.array([0, 1, 2, 3]), queries,
                                            costs.pairs(queries, targets))
    # the first target takes query 0 at its cheapest; both others are stuck
    assert failed.tolist() == [1, 2] and assigned.tolist() == [0, -1, -1]
    result = solve_certified(costs, max_sparse_fraction=10.0)  # tiny: may finish
    # round 2 places targets 1 and 2 with every query; then target 0 must leave query 0
    # (the certificate's violation), which round 3 solves
    assert result.certified and result.rounds == 3
    assert result.queries[1] == 0
    assert _total(costs, result.queries) == pytest.approx(_dense_total(costs), abs=1e-12)


def test_duals_are_feasible_and_tight_on_the_sparse_pairs() -> None:
    costs = _detector_like(np.random.default_rng(3), 200, 700)
    grid = QueryGrid.build(costs.query_boxes, costs.target_boxes)
    start, queries, values = candidate_pairs(costs.query_cost, costs.query_boxes,
                                             costs.target_boxes, 5.0, 2.0, grid)
    targets = np.repeat(np.arange(200), np.diff(start))
    np.testing.assert_array_equal(values, costs.pairs(queries, targets))
    failed, assigned, u, v = solve_sparse_lap(200, 700, start, queries, values)
    # two targets overlap no query that the others leave free: left out, the rest optimal
    assert failed.tolist() == [28, 70]
    placed = np.setdiff1d(np.arange(200), failed)
    assert np.all(assigned[failed] == -1)
    assert len(set(assigned[placed].tolist())) == placed.size
    rows = np.isin(targets, placed)
    reduced = values[rows] - u[targets[rows]] - v[queries[rows]]
    assert reduced.min() >= -1e-9
    own = assigned[targets[rows]] == queries[rows]
    np.testing.assert_allclose(reduced[own], 0.0, atol=1e-12)
    assert v.max() <= 0
    unmatched = np.setdiff1d(np.arange(700), assigned)
    assert np.all(v[unmatched] == 0)
    # strong duality on the sparse problem of the placed targets
    total = costs.pairs(assigned[placed], placed).sum()
    assert u[placed].sum() + v.sum() == pytest.approx(total)


@pytest.mark.parametrize("seed", range(3))
def test_candidate_pairs_hold_every_overlapping_pair_once(seed: int) -> None:
    rng = np.random.default_rng(seed)
    costs = _detector_like(rng, 60, 400)
    qb = costs.query_boxes.copy()
    qb[:3, 2:] = 0.5  # huge boxes: paired with every target
    costs = BoxMatchingCosts(costs.query_cost, qb, costs.target_boxes, 5.0, 2.0)
    targets, queries = _pairs(costs)
    found = set(zip(targets.tolist(), queries.tolist()))
    assert len(found) == len(targets)  # no pair twice
    assert np.all(np.diff(targets) >= 0)  # grouped by target
    a, b = qb[:, None], costs.target_boxes[None]
    gap = np.abs(a[..., :2] - b[..., :2]) - 0.5 * (a[..., 2:] + b[..., 2:])
    overlap = {(t, q) for q, t in zip(*np.nonzero((gap < 0).all(-1)))}
    # every pair with a positive GIoU, the huge queries, nothing else
    assert found == overlap | {(t, q) for t in range(60) for q in range(3)}


def test_huge_predicted_boxes_are_paired_with_every_target() -> None:
    rng = np.random.default_rng(5)
    costs = _detector_like(rng, 50, 300)
    qb = costs.query_boxes.copy()
    qb[:5, 2:] = 0.9  # five boxes covering most of the image
    cost = costs.query_cost.copy()
    cost[:5] = -4.0  # and very confident
    costs = BoxMatchingCosts(cost, qb, costs.target_boxes, 5.0, 2.0)
    result = solve_certified(costs)
    assert _total(costs, result.queries) == pytest.approx(_dense_total(costs), abs=1e-9)


def test_no_targets_and_square_problems() -> None:
    rng = np.random.default_rng(6)
    empty = BoxMatchingCosts(np.zeros(4), rng.random((4, 4)) * 0.1 + 0.01, np.zeros((0, 4)),
                             5.0, 2.0)
    assert solve_certified(empty).queries.shape == (0,)
    square = _random_problem(rng, 5, 5)
    result = solve_certified(square)  # no unmatched query: solved densely
    assert not result.certified
    assert _total(square, result.queries) == pytest.approx(_dense_total(square), abs=1e-12)
    np.testing.assert_array_equal(result.queries, solve_dense(square))


def test_zero_box_weight_uses_the_dense_solver() -> None:
    costs = _random_problem(np.random.default_rng(7), 20, 5)
    costs = BoxMatchingCosts(costs.query_cost, costs.query_boxes, costs.target_boxes, 0.0, 2.0)
    result = solve_certified(costs)
    assert not result.certified
    assert _total(costs, result.queries) == pytest.approx(_dense_total(costs), abs=1e-12)


@pytest.mark.parametrize("field", ["query_cost", "query_boxes", "target_boxes"])
def test_non_finite_inputs_raise(field: str) -> None:
    costs = _random_problem(np.random.default_rng(8), 20, 5)
    values = getattr(costs, field).copy()
    values.flat[3] = np.nan
    bad = BoxMatchingCosts(**{**costs.__dict__, field: values})
    with pytest.raises(ValueError, match="non-finite"):
        solve_certified(bad)
