"""napari coordinates -> `LabellingSession` arguments (`cellsam.napari._layers`; numpy only,
so these run without napari or a display)."""

from __future__ import annotations

import numpy as np
import pytest

from cellsam.napari._layers import (
    channel_map,
    image_layout,
    parse_ids,
    points_to_xy,
    rectangle_to_box,
    to_image_rc,
)


def test_rectangle_edges_become_pixel_edges():
    # napari: pixel (r, c) is centred at (r, c), so a rectangle from -0.5 to 9.5 covers
    # pixels 0..9, which the session writes as edges 0..10
    square = [[-0.5, -0.5], [-0.5, 9.5], [9.5, 9.5], [9.5, -0.5]]
    np.testing.assert_array_equal(rectangle_to_box(square), [0, 0, 10, 10])
    # rows 40..90, columns 100..160, vertices in any order: x from the columns
    v = [[90, 160], [40, 100], [40, 160], [90, 100]]
    np.testing.assert_array_equal(rectangle_to_box(v), [100.5, 40.5, 160.5, 90.5])
    # a 3-D layer's vertices: the last two axes are (row, col)
    np.testing.assert_array_equal(rectangle_to_box([[2, 4, 6], [2, 8, 1]]), [1.5, 4.5, 6.5, 8.5])
    with pytest.raises(ValueError, match="rectangle"):
        rectangle_to_box([[1, 2]])
    with pytest.raises(ValueError, match="rectangle"):
        rectangle_to_box([[1, 2], [np.nan, 3]])


def test_points_swap_to_xy_and_layers_map_through_world():
    np.testing.assert_array_equal(points_to_xy([[5, 7], [0, 3]]), [[7, 5], [3, 0]])
    # a points layer at scale 2 translated by (10, 0) over an image at scale 1, translate 0:
    # data (3, 4) -> world (16, 8) -> image (16, 8)
    np.testing.assert_allclose(to_image_rc([[3, 4]], (2, 2), (10, 0), (1, 1), (0, 0)), [[16, 8]])
    # and an image at scale (0.5, 0.5), translate (0, 2): world (16, 8) -> (32, 12)
    np.testing.assert_allclose(to_image_rc([[3, 4]], (2, 2), (10, 0), (0.5, 0.5), (0, 2)),
                               [[32, 12]])
    # a 3-D image layer's scale: only its last two axes count
    np.testing.assert_allclose(to_image_rc([[3, 4]], (1, 1), (0, 0), (7, 2, 2), (5, 0, 0)),
                               [[1.5, 2]])


def test_image_layouts_and_channel_maps():
    assert image_layout((64, 80), rgb=False) == (1, None)
    assert image_layout((64, 80, 3), rgb=True) == (3, -1)
    assert image_layout((2, 64, 80), rgb=False) == (2, 0)
    with pytest.raises(ValueError, match="one 2-D image"):
        image_layout((4, 2, 64, 80), rgb=False)
    assert channel_map(None, None) is None
    assert channel_map(0, None) == {"nuclear": 0}
    assert channel_map(1, 2) == {"nuclear": 1, "whole_cell": 2}
    assert parse_ids("3, 4") == [3, 4] and parse_ids(" 7 12,9 ") == [7, 12, 9]
    with pytest.raises(ValueError, match="'x'"):
        parse_ids("3, x")
    with pytest.raises(ValueError, match="'0'"):
        parse_ids("0 4")
