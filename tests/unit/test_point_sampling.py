"""Ground-truth point prompts for SAC training (`cellsam.data.point_sampling`)."""

from __future__ import annotations

import numpy as np
import pytest

from cellsam.data.point_sampling import PAD_LABEL, sample_points


def scene() -> np.ndarray:
    """Cell 1 (6x6) touches cell 2 (6x4) on its right; cell 3 (3x3) stands alone; cell 4 is
    an L shape whose centroid lies outside it."""
    lab = np.zeros((30, 30), np.int32)
    lab[2:8, 2:8] = 1
    lab[2:8, 8:12] = 2
    lab[15:18, 15:18] = 3
    lab[22:29, 2] = 4
    lab[28, 2:9] = 4
    return lab


def value_at(lab: np.ndarray, xy: np.ndarray) -> np.ndarray:
    xy = xy.astype(int)
    return lab[xy[..., 1], xy[..., 0]]


def test_shapes_and_label_layout():
    lab = scene()
    pts, labels = sample_points(lab, np.array([1, 2, 3]), 3, 4, 0.5, np.random.default_rng(0))
    assert pts.shape == (3, 7, 2) and pts.dtype == np.float32
    assert labels.shape == (3, 7) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.tile([1, 1, 1, 0, 0, 0, 0], (3, 1)))
    assert np.array_equal(pts, np.round(pts))  # pixel centres


def test_first_positive_is_centroid_pixel():
    lab = scene()
    pts, _ = sample_points(lab, np.array([1, 3, 4]), 1, 0, 0.0, np.random.default_rng(0))
    # Cell 1: rows/cols 2..7, centroid (4.5, 4.5): four tied pixels, the first in row-major
    # order is (r 4, c 4). Cell 3: centroid pixel (16, 16).
    np.testing.assert_array_equal(pts[0, 0], [4, 4])
    np.testing.assert_array_equal(pts[1, 0], [16, 16])
    # Cell 4 (13 pixels: column 2 rows 22..28 and row 28 columns 3..8): centroid
    # x = (7*2 + 3+4+...+8) / 13 = 47/13 = 3.615, y = (22+...+28 + 6*28) / 13 = 343/13
    # = 26.385, which is background. Nearest cell pixel: (x 2, y 26) with distance^2
    # 1.615^2 + 0.385^2 = 2.757 (next: (2, 27) and (3, 28) with 2.988).
    assert value_at(lab, pts[2, 0]) == 4
    np.testing.assert_array_equal(pts[2, 0], [2, 26])


def test_positives_inside_negatives_outside():
    lab = scene()
    ids = np.array([1, 2, 3, 4])
    pts, labels = sample_points(lab, ids, 5, 8, 0.5, np.random.default_rng(3))
    hit = value_at(lab, pts)
    for i, cid in enumerate(ids):
        assert (hit[i, labels[i] == 1] == cid).all()
        assert (hit[i, labels[i] == 0] != cid).all()


def test_neighbour_negatives_on_touching_cell():
    lab = scene()
    pts, labels = sample_points(lab, np.array([1, 2]), 1, 4, 0.5, np.random.default_rng(1))
    hit = value_at(lab, pts)
    # round(0.5 * 4) = 2 neighbour negatives (points 1, 2) then 2 background (points 3, 4).
    np.testing.assert_array_equal(hit[0, 1:3], [2, 2])
    np.testing.assert_array_equal(hit[1, 1:3], [1, 1])
    np.testing.assert_array_equal(hit[:, 3:], 0)
    # Neighbourhood: cell 1's box (rows/cols 2..7) grown by 6 -> rows/cols 0..13.
    assert (pts[0, 1:] <= 13).all()
    # All on neighbours, none on background.
    pts, _ = sample_points(lab, np.array([1]), 1, 6, 1.0, np.random.default_rng(1))
    assert (value_at(lab, pts[0, 1:]) == 2).all()


def test_no_neighbour_falls_back_to_background():
    lab = scene()
    pts, _ = sample_points(lab, np.array([3]), 1, 5, 1.0, np.random.default_rng(0))
    assert (value_at(lab, pts[0, 1:]) == 0).all()
    # Cell 3's box rows/cols 15..17 grown by 3: rows/cols 12..20.
    assert pts[0, 1:].min() >= 12 and pts[0, 1:].max() <= 20


def test_cell_filling_the_image_gets_padding():
    lab = np.ones((4, 5), np.int32)
    pts, labels = sample_points(lab, np.array([1]), 2, 3, 0.5, np.random.default_rng(0))
    np.testing.assert_array_equal(labels[0], [1, 1, PAD_LABEL, PAD_LABEL, PAD_LABEL])
    assert (value_at(lab, pts[0, :2]) == 1).all()
    # A cell touching only another cell (no background anywhere): negatives on it.
    lab[:, 3:] = 2
    pts, labels = sample_points(lab, np.array([1]), 1, 3, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(labels[0], [1, 0, 0, 0])
    assert (value_at(lab, pts[0, 1:]) == 2).all()


def test_small_cell_draws_with_replacement():
    lab = np.zeros((10, 10), np.int32)
    lab[5, 5] = 7
    pts, _ = sample_points(lab, np.array([7]), 4, 0, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(pts[0], np.full((4, 2), 5.0))


def test_without_replacement_when_enough_pixels():
    lab = scene()
    pts, _ = sample_points(lab, np.array([1]), 1 + 35, 0, 0.0, np.random.default_rng(0))
    # 35 draws from the 36 pixels are distinct.
    assert len({tuple(p) for p in pts[0, 1:]}) == 35


def test_reproducible_with_seed():
    lab = scene()
    ids = np.array([4, 1, 3])
    a = sample_points(lab, ids, 4, 6, 0.34, np.random.default_rng(42))
    b = sample_points(lab, ids, 4, 6, 0.34, np.random.default_rng(42))
    c = sample_points(lab, ids, 4, 6, 0.34, np.random.default_rng(43))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_empty_and_errors():
    lab = scene()
    pts, labels = sample_points(lab, np.array([], np.int64), 2, 3, 0.5,
                                np.random.default_rng(0))
    assert pts.shape == (0, 5, 2) and labels.shape == (0, 5)
    with pytest.raises(ValueError, match="cell id 9"):
        sample_points(lab, np.array([9]), 1, 1, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="cell id 0"):
        sample_points(lab, np.array([0]), 1, 1, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="neighbour_fraction"):
        sample_points(lab, np.array([1]), 1, 1, 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_positive"):
        sample_points(lab, np.array([1]), 0, 1, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="int"):
        sample_points(lab.astype(float), np.array([1]), 1, 1, 0.5, np.random.default_rng(0))
