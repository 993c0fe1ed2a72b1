"""DeepCell object metrics on hand-made label images, and against a literal (slow)
re-statement of the toolbox algorithm: the full augmented cost matrix solved by
`linear_sum_assignment` and the networkx graph of unmatched objects classified by the
maximum degree of each connected component.

Scene: three 4x4 squares, ids 1 (rows 0-3, cols 0-3), 2 (rows 0-3, cols 4-7, touching 1)
and 3 (rows 6-9, cols 8-11) on a 12x16 canvas.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from cellsam.metrics import DeepCellCounts, deepcell_counts, evaluate_deepcell, iou_matrix


def paint(*rects, shape=(12, 16)) -> np.ndarray:
    lab = np.zeros(shape, np.int64)
    for i, y0, y1, x0, x1 in rects:
        lab[y0:y1, x0:x1] = i
    return lab


SQ1, SQ2, SQ3 = (1, 0, 4, 0, 4), (2, 0, 4, 4, 8), (3, 6, 10, 8, 12)
TRUE = paint(SQ1, SQ2, SQ3)
KEYS = ("correct", "missed", "gained", "splits", "merges", "catastrophes")


def summary(c: DeepCellCounts) -> tuple[int, ...]:
    return tuple(getattr(c, k) for k in KEYS)


def test_perfect():
    c = deepcell_counts(TRUE, TRUE + 10 * (TRUE > 0))
    assert (c.n_true, c.n_pred) == (3, 3)
    assert summary(c) == (3, 0, 0, 0, 0, 0)
    assert (c.precision, c.recall, c.f1) == (1.0, 1.0, 1.0)


def test_one_missed_and_one_false_cell():
    c = deepcell_counts(TRUE, paint(SQ1, SQ3))
    assert summary(c) == (2, 1, 0, 0, 0, 0)
    assert c.recall == pytest.approx(2 / 3) and c.precision == 1.0
    c = deepcell_counts(TRUE, paint(SQ1, SQ2, SQ3, (9, 8, 12, 0, 4)))
    assert summary(c) == (3, 0, 1, 0, 0, 0)
    assert c.precision == pytest.approx(3 / 4) and c.f1 == pytest.approx(2 * 0.75 / 1.75)


def test_split_into_halves():
    # Square 3 -> two 2x4 halves, IoU 0.5 each (< 0.6): no direct match, one split.
    c = deepcell_counts(TRUE, paint(SQ1, SQ2, (3, 6, 8, 8, 12), (4, 8, 10, 8, 12)))
    assert summary(c) == (2, 0, 0, 1, 0, 0)
    assert c.gained_det_from_split == 1
    assert c.precision == pytest.approx(2 / 4) and c.recall == pytest.approx(2 / 3)


def test_uneven_split_piece_is_gained():
    # 3 columns (IoU 0.75) match directly; the 1-column piece is then alone: gained.
    c = deepcell_counts(TRUE, paint(SQ1, SQ2, (3, 6, 10, 8, 11), (4, 6, 10, 11, 12)))
    assert summary(c) == (3, 0, 1, 0, 0, 0)


def test_merge_of_two_touching_cells():
    c = deepcell_counts(TRUE, paint((5, 0, 4, 0, 8), SQ3))
    assert summary(c) == (1, 0, 0, 0, 1, 0)
    assert c.missed_det_from_merge == 1


def test_catastrophe_counts_one_correct_detection():
    # Squares 1+2 (a 4x8 block) re-cut into top and bottom halves: each pred shares 8 px
    # with each true (IoU 1/3): 2 x 2 all linked -> one catastrophe, and the toolbox
    # counts it as one more correct detection.
    c = deepcell_counts(TRUE, paint((5, 0, 2, 0, 8), (6, 2, 4, 0, 8), SQ3))
    assert summary(c) == (2, 0, 0, 0, 0, 1)
    assert (c.true_det_in_catastrophe, c.pred_det_in_catastrophe) == (2, 2)
    assert c.precision == pytest.approx(2 / 3) and c.recall == pytest.approx(2 / 3)


def test_tiny_contained_piece_stays_linked_by_the_boost():
    # 10x10 cell cut into 50 + 46 + 4 px. IoUs 0.5, 0.46, 0.04: none matches; the 4-px
    # piece has IoU < 0.1 but lies inside the cell, so its IoU is set to 0.1 and it
    # joins the split (2 extra pieces) instead of being a separate gained detection.
    t = paint((1, 0, 10, 0, 10))
    p = paint((1, 0, 5, 0, 10), (2, 5, 10, 0, 10), (3, 8, 10, 8, 10))
    c = deepcell_counts(t, p)
    assert summary(c) == (0, 0, 0, 1, 0, 0)
    assert c.gained_det_from_split == 2


def test_single_overlapping_pair_is_one_missed_and_one_gained():
    # 4x4 cell shifted by 2 columns: IoU 8/24 < 0.6, an edge of degree 1 -> not a split.
    t = paint((1, 0, 4, 0, 4))
    c = deepcell_counts(t, paint((1, 0, 4, 2, 6)))
    assert summary(c) == (0, 1, 1, 0, 0, 0)


def test_iou_exactly_0_6_is_not_a_match():
    # Shift by one column: IoU 12/20 = 0.6 exactly, a cost tie that the toolbox's solver
    # leaves unmatched; 5x5 shifted by one (IoU 20/30) matches.
    t = paint((1, 0, 4, 0, 4), (2, 6, 11, 0, 5))
    p = paint((1, 0, 4, 1, 5), (2, 6, 11, 1, 6))
    assert iou_matrix(t, p)[0][0, 0] == 0.6
    c = deepcell_counts(t, p)
    assert summary(c) == (1, 1, 1, 0, 0, 0)


def test_force_event_links():
    # A 10x10 pred over a true cell (96 px) plus a 2x2 true corner (4 px).
    t = paint((1, 0, 10, 0, 10), (2, 0, 2, 0, 2))
    p = paint((1, 0, 10, 0, 10))
    assert summary(deepcell_counts(t, p)) == (1, 1, 0, 0, 0, 0)
    c = deepcell_counts(t, p, force_event_links=True)
    assert summary(c) == (0, 0, 0, 0, 1, 0)


def test_empty_images():
    empty = np.zeros_like(TRUE)
    c = deepcell_counts(empty, TRUE)
    assert summary(c) == (0, 0, 3, 0, 0, 0) and c.f1 == 0.0
    c = deepcell_counts(TRUE, empty)
    assert summary(c) == (0, 3, 0, 0, 0, 0) and c.f1 == 0.0
    c = deepcell_counts(empty, empty)
    assert c == DeepCellCounts() and (c.precision, c.recall, c.f1) == (0.0, 0.0, 0.0)


def test_sum_and_aggregate():
    pairs = [(TRUE, TRUE), (TRUE, paint((5, 0, 4, 0, 8), SQ3))]
    total = deepcell_counts(*pairs[0]) + deepcell_counts(*pairs[1])
    assert DeepCellCounts.from_vector(total.to_vector()) == total
    out = evaluate_deepcell(*zip(*pairs))
    assert (out["correct"], out["n_true"], out["n_pred"], out["merges"]) == (4, 6, 5, 1)
    assert out["recall"] == pytest.approx(4 / 6) and out["precision"] == pytest.approx(4 / 5)
    assert out["f1_mean"] == pytest.approx((1.0 + 2 * 0.5 * (1 / 3) / (0.5 + 1 / 3)) / 2)


# ---- the toolbox algorithm, stated literally (slow: dense matrices, networkx) ----


def literal_toolbox(y_true: np.ndarray, y_pred: np.ndarray, c1=0.4, c2=0.1) -> tuple:
    nx = pytest.importorskip("networkx")
    iou, _, _ = iou_matrix(y_true, y_pred)
    n_t, n_p = iou.shape
    tid, pid = np.unique(y_true[y_true > 0]), np.unique(y_pred[y_pred > 0])
    mod = iou.copy()
    for i, j in zip(*np.nonzero((iou > 0) & (iou < 1 - c1))):
        tm, pm = y_true == tid[i], y_pred == pid[j]
        inter = np.count_nonzero(tm & pm)
        if iou[i, j] <= c1 and max(inter / tm.sum(), inter / pm.sum()) > 0.5:
            mod[i, j] = c2
    n = n_t + n_p
    cost = np.ones((n, n))
    cost[:n_t, :n_p] = 1 - mod
    cost[n - n_p :, n - n_t :] = (1 - mod).T
    cost[n - n_p :, :n_p] = c1 * np.eye(n_p) + np.ones((n_p, n_p)) - np.eye(n_p)
    cost[:n_t, n - n_t :] = c1 * np.eye(n_t) + np.ones((n_t, n_t)) - np.eye(n_t)
    assign = np.zeros_like(cost)
    assign[linear_sum_assignment(cost)] = 1
    correct = int(assign[:n_t, :n_p].sum())
    gained_nodes = np.nonzero(assign[n - n_p :, :n_p])[0]
    missed_nodes = np.nonzero(assign[:n_t, n - n_t :])[0]
    g = nx.Graph()
    g.add_nodes_from(("t", i) for i in missed_nodes)
    g.add_nodes_from(("p", j) for j in gained_nodes)
    g.add_edges_from(
        (("t", i), ("p", j)) for i in missed_nodes for j in gained_nodes if mod[i, j] >= c2
    )
    missed = gained = splits = merges = cata = 0
    for comp in nx.connected_components(g):
        sub = g.subgraph(comp)
        kt = sum(1 for k, _ in comp if k == "t")
        kp = len(comp) - kt
        if max(d for _, d in sub.degree) <= 1:
            missed, gained = missed + kt, gained + kp
        elif kt == 1:
            splits += 1
        elif kp == 1:
            merges += 1
        else:
            cata += 1
            correct += 1
    return correct, missed, gained, splits, merges, cata


def test_matches_literal_toolbox_algorithm_on_random_scenes():
    rng = np.random.default_rng(7)
    for _ in range(150):
        h, w = rng.integers(6, 20, size=2)
        t = np.zeros((h, w), np.int64)
        for i in range(1, rng.integers(1, 12)):
            y, x = rng.integers(0, h), rng.integers(0, w)
            t[y : y + rng.integers(1, 7), x : x + rng.integers(1, 7)] = i
        p = np.roll(t, (rng.integers(-1, 2), rng.integers(-1, 2)), (0, 1))
        p = np.where(rng.random(p.shape) < 0.1, 0, p)
        for i in range(rng.integers(0, 4)):
            y, x = rng.integers(0, h), rng.integers(0, w)
            p[y : y + rng.integers(1, 7), x : x + rng.integers(1, 7)] = 50 + i
        assert summary(deepcell_counts(t, p)) == literal_toolbox(t, p)
