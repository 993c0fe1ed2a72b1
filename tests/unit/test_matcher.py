"""HungarianMatcher: cost formula, optimality against brute force, edge cases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conf_values import make_matcher


def _random_outputs(g: torch.Generator, batch: int, queries: int) -> dict:
    return {
        "pred_logits": torch.randn(batch, queries, 1, generator=g),
        "pred_boxes": torch.rand(batch, queries, 4, generator=g) * 0.4 + 0.1,
    }


def _random_boxes(g: torch.Generator, n: int) -> torch.Tensor:
    return torch.rand(n, 4, generator=g) * 0.4 + 0.1


def test_cost_matrix_entry_by_hand() -> None:
    matcher = make_matcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0)
    logits = torch.tensor([[1.0]])
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2]])  # xyxy [0.4, 0.4, 0.6, 0.6]
    target = torch.tensor([[0.55, 0.5, 0.2, 0.2]])  # xyxy [0.45, 0.4, 0.65, 0.6]
    p = 1 / (1 + math.exp(-1.0))
    focal = 0.25 * (1 - p) ** 2 * -math.log(p) - 0.75 * p**2 * -math.log(1 - p)
    l1 = 0.05
    # intersection 0.15 * 0.2 = 0.03, union 0.05, enclosing 0.25 * 0.2 = 0.05 -> GIoU 0.6.
    giou = 0.6
    expected = 5.0 * l1 + 2.0 * focal - 2.0 * giou
    cost = matcher.cost_matrix(logits, pred, target)
    assert cost.shape == (1, 1)
    assert cost.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_assignment_is_optimal_against_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    queries = 5
    n = seed % queries + 1  # 1..5 targets, including the square case
    matcher = make_matcher()
    outputs = _random_outputs(g, 1, queries)
    targets = [{"boxes": _random_boxes(g, n)}]
    ((rows, cols),) = matcher(outputs, targets)
    assert rows.dtype == torch.int64 and cols.dtype == torch.int64
    assert len(rows) == n and sorted(cols.tolist()) == list(range(n))
    assert len(set(rows.tolist())) == n

    cost = matcher.cost_matrix(
        outputs["pred_logits"][0], outputs["pred_boxes"][0], targets[0]["boxes"]
    ).double()
    ours = cost[rows, cols].sum().item()
    best = min(
        sum(cost[q, t].item() for t, q in enumerate(perm))
        for perm in itertools.permutations(range(queries), n)
    )
    assert ours == pytest.approx(best, abs=1e-6)


def test_image_without_cells_gives_empty_indices() -> None:
    g = torch.Generator().manual_seed(1)
    ((rows, cols),) = make_matcher()(_random_outputs(g, 1, 4), [{"boxes": torch.zeros(0, 4)}])
    assert rows.shape == (0,) and cols.shape == (0,)
    assert rows.dtype == torch.int64 and cols.dtype == torch.int64


def test_batch_mixing_empty_and_non_empty_images() -> None:
    g = torch.Generator().manual_seed(2)
    matcher = make_matcher()
    outputs = _random_outputs(g, 3, 6)
    targets = [
        {"boxes": _random_boxes(g, 3)},
        {"boxes": torch.zeros(0, 4)},
        {"boxes": _random_boxes(g, 6)},
    ]
    indices = matcher(outputs, targets)
    assert [len(r) for r, _ in indices] == [3, 0, 6]
    # Every image is matched independently of the others.
    for i in (0, 2):
        single = {k: v[i : i + 1] for k, v in outputs.items()}
        ((rows, cols),) = matcher(single, [targets[i]])
        assert torch.equal(rows, indices[i][0]) and torch.equal(cols, indices[i][1])


def test_more_cells_than_queries_raises() -> None:
    g = torch.Generator().manual_seed(3)
    with pytest.raises(ValueError, match=r"7 cells .* only 4 queries"):
        make_matcher()(_random_outputs(g, 1, 4), [{"boxes": _random_boxes(g, 7)}])


def test_bf16_outputs_are_matched() -> None:
    g = torch.Generator().manual_seed(4)
    outputs = {k: v.bfloat16() for k, v in _random_outputs(g, 1, 8).items()}
    ((rows, cols),) = make_matcher()(outputs, [{"boxes": _random_boxes(g, 3)}])
    assert len(rows) == 3


def test_nan_predictions_raise_a_clear_error() -> None:
    g = torch.Generator().manual_seed(5)
    outputs = _random_outputs(g, 1, 4)
    outputs["pred_boxes"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        make_matcher()(outputs, [{"boxes": _random_boxes(g, 2)}])


def test_match_layers_threaded_equals_per_layer_serial() -> None:
    g = torch.Generator().manual_seed(6)
    layers = [_random_outputs(g, 3, 12) for _ in range(3)]
    targets = [{"boxes": _random_boxes(g, n)} for n in (4, 0, 12)]
    threaded = make_matcher(num_threads=4, parallel_min_entries=0).match_layers(layers, targets)
    serial = make_matcher(num_threads=1)
    assert len(threaded) == 3
    for layer, result in zip(layers, threaded):
        for (r1, c1), (r2, c2) in zip(result, serial(layer, targets)):
            assert torch.equal(r1, r2) and torch.equal(c1, c2)
    assert [len(r) for r, _ in threaded[0]] == [4, 0, 12]


def test_small_problems_skip_the_thread_pool(monkeypatch) -> None:
    import cellsam.models.finder.matcher as matcher_module

    def no_pool(*args, **kwargs):
        raise AssertionError("thread pool used")

    monkeypatch.setattr(matcher_module, "ThreadPoolExecutor", no_pool)
    g = torch.Generator().manual_seed(7)
    layers = [_random_outputs(g, 2, 100) for _ in range(3)]
    targets = [{"boxes": _random_boxes(g, n)} for n in (10, 7)]
    result = make_matcher(num_threads=4).match_layers(layers, targets)  # 100 x 10 entries
    assert [len(r) for r, _ in result[2]] == [10, 7]
    with pytest.raises(AssertionError, match="thread pool"):
        make_matcher(num_threads=4, parallel_min_entries=1000).match_layers(layers, targets)


def test_certified_and_dense_solvers_give_the_same_total_cost() -> None:
    g = torch.Generator().manual_seed(7)
    layers = [_random_outputs(g, 2, 400) for _ in range(2)]
    offset = torch.tensor([0.3, 0.3, 0.01, 0.01])
    targets = [{"boxes": torch.rand(n, 4, generator=g) * 0.05 + offset} for n in (60, 0)]
    certified = make_matcher(solver="certified").match_layers(layers, targets)
    dense = make_matcher(solver="dense").match_layers(layers, targets)
    matcher = make_matcher()
    for layer, a, b in zip(layers, certified, dense):
        cost = matcher.cost_matrix(layer["pred_logits"][0], layer["pred_boxes"][0],
                                   targets[0]["boxes"])
        assert cost[a[0][0], a[0][1]].sum().item() == pytest.approx(
            cost[b[0][0], b[0][1]].sum().item(), abs=1e-9)
        assert torch.equal(a[0][0], a[0][0].sort().values)  # queries ascending
        assert a[1][0].numel() == 0 and b[1][0].numel() == 0


def test_unknown_solver_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown matcher solver 'fast'"):
        make_matcher(solver="fast")
