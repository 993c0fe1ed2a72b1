"""Channel placement and intensity normalisation (cellsam.preprocess)."""

from __future__ import annotations

import numpy as np
import pytest

from cellsam.preprocess import (
    channels_first,
    normalize_channels,
    parse_channel_map,
    place_channels,
    rescale_channel,
)


def _rgb(h: int = 20, w: int = 30) -> np.ndarray:
    """[H, W, 3] uint16 image whose channel c holds the value 100 * (c + 1) everywhere."""
    return np.stack([np.full((h, w), 100 * (c + 1), np.uint16) for c in range(3)], axis=-1)


def test_single_channel_goes_to_whole_cell_slot() -> None:
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = place_channels(img)
    assert out.shape == (3, 3, 4) and out.dtype == np.float32
    assert not out[0].any() and not out[1].any()
    np.testing.assert_array_equal(out[2], img.astype(np.float32))


def test_channel_map_places_nuclear_green_and_whole_cell_blue() -> None:
    out = place_channels(_rgb(), {"nuclear": 0, "whole_cell": 1})
    assert (out[0] == 0).all() and (out[1] == 100).all() and (out[2] == 200).all()


def test_channels_first_and_last_give_the_same_result() -> None:
    hwc = _rgb()
    chw = np.moveaxis(hwc, -1, 0)
    cmap = {"nuclear": 2, "whole_cell": [0, 1]}
    a, b = place_channels(hwc, cmap), place_channels(chw, cmap)
    np.testing.assert_array_equal(a, b)
    assert (a[1] == 300).all() and (a[2] == 150).all()  # [0, 1] is averaged: (100 + 200) / 2


def test_nuclear_only_moves_to_blue_and_default_averages_colour() -> None:
    nuc = place_channels(_rgb(), {"nuclear": 2})
    assert not nuc[1].any() and (nuc[2] == 300).all()
    assert (place_channels(_rgb(), {"nuclear": "all"})[2] == 200).all()
    assert (place_channels(_rgb(), None)[2] == 200).all()  # mean of 100, 200, 300
    assert (place_channels(_rgb(), {"nuclear": None, "whole_cell": 0})[1] == 0).all()


@pytest.mark.parametrize(
    ("image", "cmap", "match"),
    [
        (np.zeros((2, 3, 8, 8)), None, "4-D"),
        (np.zeros((0, 5)), None, "empty"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), None, "NaN"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), None, "NaN or infinite"),
        (np.zeros((8, 8), dtype=complex), None, "not numeric"),
        (np.zeros((20, 20, 3)), {"membrane": 0}, "not understood"),
        (np.zeros((20, 20, 3)), {"whole_cell": 3}, r"channel\(s\) \[3\]"),
        (np.zeros((20, 20, 3)), {"whole_cell": None}, "selects no channel"),
        (np.zeros((20, 20, 3)), {"whole_cell": "first"}, "'all'"),
        (np.zeros((30, 20, 40)), None, "channel axis"),
    ],
)
def test_place_channels_rejects_bad_input(image, cmap, match) -> None:
    with pytest.raises(ValueError, match=match):
        place_channels(image, cmap)


def test_channel_axis_guess_and_override() -> None:
    assert channels_first(np.zeros((4, 64, 64))).shape == (4, 64, 64)
    assert channels_first(np.zeros((64, 64, 2))).shape == (2, 64, 64)
    assert channels_first(np.zeros((3, 10, 2))).shape == (2, 3, 10)  # the shorter end axis
    assert channels_first(np.zeros((30, 20, 40)), channel_axis=0).shape == (30, 20, 40)


def test_parse_channel_map() -> None:
    assert parse_channel_map("nuclear=0,whole_cell=1") == {"nuclear": 0, "whole_cell": 1}
    assert parse_channel_map("whole_cell=0+1+2") == {"whole_cell": [0, 1, 2]}
    assert parse_channel_map("nuclear=all, whole_cell=none") == {"nuclear": "all",
                                                                  "whole_cell": None}
    assert parse_channel_map("") is None
    for bad in ("cyto=1", "nuclear", "nuclear=x"):
        with pytest.raises(ValueError, match="channel map"):
            parse_channel_map(bad)


def test_percentile_clip_uses_nonzero_values_and_rescales() -> None:
    # 1000 non-zero values 1..1000 plus 1000 zeros: the zeros must not move the percentile
    ch = np.concatenate([np.arange(1, 1001), np.zeros(1000)]).reshape(40, 50)
    hi = np.percentile(np.arange(1, 1001), 99.9)  # 999.001
    assert hi == pytest.approx(999.001)
    out = rescale_channel(ch, 99.9)
    assert out.max() == 1.0 and out.min() == 0.0
    assert out.ravel()[499] == pytest.approx(500 / hi)  # value 500; the minimum (0) maps to 0
    assert out.ravel()[998] == pytest.approx(999 / hi) and out.ravel()[998] < 1.0  # under the clip
    assert out.ravel()[999] == 1.0  # 1000 is clipped to 999.001
    assert rescale_channel(np.zeros((5, 5))) is None
    assert rescale_channel(np.full((5, 5), 7.0)) is None  # constant: nothing to rescale


def test_normalize_channels_range_empty_channels_and_clahe() -> None:
    rng = np.random.default_rng(0)
    img = np.zeros((3, 200, 160), np.float32)
    img[1] = rng.gamma(2.0, 50.0, (200, 160))
    img[2] = rng.gamma(2.0, 500.0, (200, 160)) + 100
    plain = normalize_channels(img, clahe=False)
    eq = normalize_channels(img, clahe=True)
    for out in (plain, eq):
        assert out.dtype == np.float32 and out.shape == img.shape
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert not out[0].any()  # the blank channel stays zero
    assert plain[2].max() == 1.0 and plain[2].min() == 0.0
    assert not np.allclose(plain, eq)  # CLAHE changed the contrast
    np.testing.assert_array_equal(eq, normalize_channels(img, clahe=True))  # deterministic
    assert not np.allclose(eq, normalize_channels(img, clahe=True, clahe_kernel=32))
    with pytest.raises(ValueError, match="C, H, W"):
        normalize_channels(img[0])
