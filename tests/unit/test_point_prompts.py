"""SAC prompt discrimination on hand-made probability maps
(`cellsam.inference.point_prompts`)."""

from __future__ import annotations

import numpy as np
import pytest

from cellsam.inference.point_prompts import (
    PAD_LABEL,
    CellPrompt,
    PointPromptSettings,
    batch_prompts,
    discriminate,
)
from cellsam.models.prompter import centre_map


def settings(**kw) -> PointPromptSettings:
    base = {"threshold": 0.5, "min_area": 1, "split": "none", "selection": "centroid",
            "points_per_cell": 1, "negatives": "none", "max_cells": None}
    return PointPromptSettings(**{**base, **kw})


def squares() -> np.ndarray:
    """Three squares: A rows 2..6 x cols 3..7 (p 0.9), B rows 10..12 x cols 20..25
    (p 0.7), C rows 15..16 x cols 2..3 (area 4, p 0.6) on a 20 x 30 map (p 0.1)."""
    fg = np.full((20, 30), 0.1, np.float32)
    fg[2:7, 3:8] = 0.9
    fg[10:13, 20:26] = 0.7
    fg[15:17, 2:4] = 0.6
    return fg


def two_discs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two radius-10 discs centred at (x 20, y 20) and (x 36, y 20), overlapping: one
    foreground component. Returns the map, the two disc masks and the true centre map."""
    yy, xx = np.mgrid[:40, :60]
    d1 = (yy - 20) ** 2 + (xx - 20) ** 2 <= 100
    d2 = (yy - 20) ** 2 + (xx - 36) ** 2 <= 100
    fg = np.where(d1 | d2, 0.9, 0.05).astype(np.float32)
    labels = np.zeros((40, 60), np.int32)
    labels[d1] = 1
    labels[d2 & ~d1] = 2
    return fg, d1, d2 & ~d1, centre_map(labels)


def test_centroids_boxes_scores_sorted():
    prompts = discriminate(squares(), None, settings())
    assert [round(p.score, 6) for p in prompts] == [0.9, 0.7, 0.6]
    # A: centroid (x 5, y 4) is a pixel. B: centroid (x 22.5, y 11): tie between x 22 and
    # x 23, the first in row-major order (x 22). C: centroid (2.5, 15.5): first is (2, 15).
    np.testing.assert_array_equal([p.points[0] for p in prompts], [[5, 4], [22, 11], [2, 15]])
    np.testing.assert_array_equal([p.box for p in prompts],
                                  [[3, 2, 8, 7], [20, 10, 26, 13], [2, 15, 4, 17]])
    assert all(p.labels.tolist() == [1] for p in prompts)
    assert prompts[1].region.shape == (3, 6) and prompts[1].region.all()


def test_min_area_and_max_cells():
    assert len(discriminate(squares(), None, settings(min_area=4))) == 3
    kept = discriminate(squares(), None, settings(min_area=5))
    assert [round(p.score, 6) for p in kept] == [0.9, 0.7]
    kept = discriminate(squares(), None, settings(max_cells=1))
    assert len(kept) == 1 and round(kept[0].score, 6) == 0.9
    assert discriminate(squares(), None, settings(threshold=0.95)) == []


def test_max_prob_versus_centroid():
    fg = squares()
    fg[6, 7] = 0.99  # the hottest pixel of A: its bottom-right corner
    centroid = discriminate(fg, None, settings())[0]
    hottest = discriminate(fg, None, settings(selection="max_prob"))[0]
    np.testing.assert_array_equal(centroid.points[0], [5, 4])
    np.testing.assert_array_equal(hottest.points[0], [7, 6])
    # Mean over A's 25 pixels: (24 * 0.9 + 0.99) / 25.
    assert hottest.score == pytest.approx((24 * 0.9 + 0.99) / 25, abs=1e-6)


@pytest.mark.parametrize("split", ["centre", "distance"])
def test_touching_discs_split(split):
    fg, d1, d2, centre = two_discs()
    assert len(discriminate(fg, centre, settings(split="none"))) == 1
    prompts = discriminate(fg, centre, settings(split=split))
    assert len(prompts) == 2
    firsts = sorted((p.points[0] for p in prompts), key=lambda q: q[0])
    # One prompt per disc, at (or within a pixel of) its centre.
    assert d1[int(firsts[0][1]), int(firsts[0][0])] and d2[int(firsts[1][1]), int(firsts[1][0])]
    assert abs(firsts[0][0] - 20) <= 1 and abs(firsts[0][1] - 20) <= 1
    assert abs(firsts[1][0] - 36) <= 2 and abs(firsts[1][1] - 20) <= 1
    # The two regions tile the component.
    total = sum(int(p.region.sum()) for p in prompts)
    assert total == int((d1 | d2).sum())


def test_centre_split_keeps_component_without_marker():
    fg, _, _, _ = two_discs()
    prompts = discriminate(fg, np.zeros_like(fg), settings(split="centre"))
    assert len(prompts) == 1


@pytest.mark.parametrize("negatives", ["background", "neighbours", "both"])
def test_negatives_outside_every_component(negatives):
    fg = squares()
    prompts = discriminate(fg, None, settings(negatives=negatives))
    n_neg = 2 if negatives == "both" else 1
    firsts = {tuple(p.points[0]) for p in prompts}
    for p in prompts:
        assert p.labels.tolist() == [1] + [0] * n_neg
        neg = p.points[1:].astype(int)
        if negatives in ("background", "both"):
            x, y = neg[0]
            assert fg[y, x] <= 0.5  # on background
            # At least max(1, radius / 2) pixels from every instance.
            radius = np.sqrt(p.region.sum() / np.pi)
            fgy, fgx = np.nonzero(fg > 0.5)
            assert np.sqrt((fgy - y) ** 2 + (fgx - x) ** 2).min() >= max(1, radius / 2)
        if negatives in ("neighbours", "both"):
            x, y = neg[-1]
            # Another instance's first positive, outside this instance.
            assert (float(x), float(y)) in firsts and (x, y) != tuple(p.points[0].astype(int))
    # A's nearest other instance (by centroid) is C: A (5, 4), B (22.5, 11), C (2.5, 15.5).
    if negatives == "neighbours":
        np.testing.assert_array_equal(prompts[0].points[1], [2, 15])


def test_background_negative_nearest_far_enough_pixel():
    fg = np.zeros((21, 21), np.float32)
    fg[8:13, 8:13] = 1.0  # area 25, radius sqrt(25 / pi) = 2.82 -> gap >= 1.41 px
    (p,) = discriminate(fg, None, settings(negatives="background"))
    # Nearest to the centroid (10, 10) among pixels >= 1.41 px from the square: two
    # pixels off an edge, first in row-major order: (x 10, y 6).
    np.testing.assert_array_equal(p.points[1], [10, 6])


def test_amplification_counts_and_spread():
    fg, _, _, _ = two_discs()
    for ppc in (1, 2, 4):
        for negatives, n_neg in (("none", 0), ("both", 2)):
            prompts = discriminate(fg, None, settings(split="distance", points_per_cell=ppc,
                                                      negatives=negatives))
            pts, labels = batch_prompts(prompts)
            assert pts.shape == (2, ppc + n_neg, 2) and labels.shape == (2, ppc + n_neg)
            assert (labels[:, :ppc] == 1).all() and (labels[:, ppc:] == 0).all()
            for p in prompts:
                pos = p.points[:ppc].astype(int)
                x0, y0 = p.box[:2].astype(int)
                assert p.region[pos[:, 1] - y0, pos[:, 0] - x0].all()
                assert len({tuple(q) for q in pos}) == ppc  # distinct, spread points
    # A 5x5 square, 3 positives: the centre (5, 4), then among the inner pixels (depth
    # >= 1.5: the 3x3 core x 4..6, y 3..5) the farthest from it, first in row-major order:
    # the corner (4, 3); then the largest distance to both chosen, squared: (6, 3), (4, 5)
    # and (6, 5) all have 2, the first in row-major order is (6, 3).
    (p,) = discriminate(squares()[:8, :10], None, settings(points_per_cell=3))
    np.testing.assert_array_equal(p.points, [[5, 4], [4, 3], [6, 3]])


def test_padding_when_a_negative_does_not_exist():
    fg = np.zeros((10, 10), np.float32)
    fg[3:6, 3:6] = 0.9
    (p,) = discriminate(fg, None, settings(negatives="both"))
    assert p.labels.tolist() == [1, 0, PAD_LABEL]  # no other instance
    np.testing.assert_array_equal(p.points[2], [0, 0])
    (p,) = discriminate(np.ones((6, 6), np.float32) * 0.9, None, settings(negatives="both"))
    assert p.labels.tolist() == [1, PAD_LABEL, PAD_LABEL]  # no background either


def test_batch_prompts():
    a = CellPrompt(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1, 0]),
                   np.array([0, 0, 5, 5]), 0.9)
    b = CellPrompt(np.array([[5.0, 6.0], [0.0, 0.0]]), np.array([1, -1]),
                   np.array([0, 0, 5, 5]), 0.8)
    pts, labels = batch_prompts([a, b])
    np.testing.assert_array_equal(pts, [[[1, 2], [3, 4]], [[5, 6], [0, 0]]])
    np.testing.assert_array_equal(labels, [[1, 0], [1, -1]])
    assert pts.dtype == np.float32 and labels.dtype == np.int64
    pts, labels = batch_prompts([])
    assert pts.shape == (0, 0, 2) and labels.shape == (0, 0)
    c = CellPrompt(np.zeros((3, 2)), np.ones(3), np.zeros(4), 0.5)
    with pytest.raises(ValueError, match="different point counts"):
        batch_prompts([a, c])


def test_bad_settings_and_inputs():
    with pytest.raises(ValueError, match="split"):
        settings(split="watershed")
    with pytest.raises(ValueError, match="selection"):
        settings(selection="random")
    with pytest.raises(ValueError, match="negatives"):
        settings(negatives="all")
    with pytest.raises(ValueError, match="points_per_cell"):
        settings(points_per_cell=0)
    with pytest.raises(ValueError, match="threshold"):
        settings(threshold=1.5)
    with pytest.raises(ValueError, match="centre map"):
        discriminate(squares(), None, settings(split="centre"))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        discriminate(squares()[None], None, settings())
    with pytest.raises(ValueError, match="differ"):
        discriminate(squares(), np.zeros((3, 3)), settings(split="centre"))
