"""Tiling, padding, label filtering and split assignment on hand-made cases."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from cellsam.preprocess import filter_labels, iter_tiles, pad_to, tile_starts
from data_prep.common import instances_to_label
from data_prep.pipeline import PrepSettings, prepare_tiles, rescale_pair
from data_prep.splits import assign_splits


@pytest.mark.parametrize(
    ("length", "starts"),
    [
        (1000, [0, 384, 488]),
        (512, [0]),
        (300, [0]),
        (513, [0, 1]),
        (896, [0, 384]),
        (1040, [0, 384, 528]),
        (1408, [0, 384, 768, 896]),
        (2048, [0, 384, 768, 1152, 1536]),
    ],
)
def test_tile_starts(length: int, starts: list[int]) -> None:
    assert tile_starts(length) == starts


def test_tile_starts_other_settings_and_errors() -> None:
    assert tile_starts(1024, tile=512, overlap=0.0) == [0, 512]
    assert tile_starts(1000, tile=256, overlap=0.5) == [0, 128, 256, 384, 512, 640, 744]
    for bad in ({"length": 0}, {"length": 10, "overlap": 1.0}, {"length": 10, "tile": 0}):
        with pytest.raises(ValueError):
            tile_starts(**{"length": 10, **bad})


def test_pad_to_pads_bottom_right_only_where_short() -> None:
    img = np.ones((3, 300, 700), np.float32)
    out = pad_to(img, 512)
    assert out.shape == (3, 512, 700)
    assert out[:, :300].all() and not out[:, 300:].any()
    assert pad_to(np.ones((600, 600)), 512).shape == (600, 600)
    assert pad_to(np.ones((10, 20), np.int32), 512).dtype == np.int32


def test_iter_tiles_cover_the_image_in_row_order() -> None:
    img = np.random.default_rng(0).random((3, 700, 1000)).astype(np.float32)
    lab = np.zeros((700, 1000), np.int32)
    tiles = list(iter_tiles(img, lab))
    assert [(t.y0, t.x0) for t in tiles] == [(0, 0), (0, 384), (0, 488),
                                               (188, 0), (188, 384), (188, 488)]
    for t in tiles:
        assert t.image.shape == (3, 512, 512) and t.label.shape == (512, 512)
        np.testing.assert_array_equal(t.image, img[:, t.y0 : t.y0 + 512, t.x0 : t.x0 + 512])
    small = list(iter_tiles(img[:, :100, :200], lab[:100, :200]))
    assert len(small) == 1 and small[0].image.shape == (3, 512, 512)
    assert not small[0].image[:, 100:].any() and not small[0].image[:, :, 200:].any()


def test_cell_cut_by_tile_border_stays_in_each_tile_as_its_visible_part() -> None:
    lab = np.zeros((512, 1000), np.int32)
    lab[100:140, 370:530] = 7  # x 370..529 crosses the borders at 384, 488 and 512
    img = np.ones((3, 512, 1000), np.float32)
    areas = {}
    for t in iter_tiles(img, lab):
        kept, _ = filter_labels(t.label)
        areas[t.x0] = int((kept == 1).sum())
        assert kept.max() == 1  # renumbered to 1 in every tile that sees it
    assert areas == {0: 40 * (512 - 370), 384: 40 * (530 - 384), 488: 40 * (530 - 488)}


def test_filter_labels_removes_and_counts_disjoint_and_thin() -> None:
    lab = np.zeros((30, 30), np.int64)
    lab[1:5, 1:5] = 3
    lab[10:12, 10:12] = 3  # object 3 has two pieces -> disjoint
    lab[7, 2:9] = 4  # 1 px high -> thin
    lab[15:25, 20] = 5  # 1 px wide -> thin
    lab[20:24, 2:6] = 9
    lab[0, 29] = 2  # a single pixel is thin too
    lab[26, 26] = lab[27, 27] = 6  # touching diagonally: one piece (8-connectivity), 2x2 box
    out, counts = filter_labels(lab)
    assert counts == {"disjoint": 1, "thin": 3}
    assert out.dtype == np.int32
    assert sorted(np.unique(out)) == [0, 1, 2]
    assert (out[26, 26], out[27, 27], out[21, 3]) == (1, 1, 2)  # ids 6, 9 -> 1, 2 in order
    assert filter_labels(np.zeros((4, 4), np.uint16)) == (
        pytest.approx(np.zeros((4, 4))), {"disjoint": 0, "thin": 0})
    with pytest.raises(ValueError, match="negative"):
        filter_labels(np.array([[0, -1], [1, 1]]))


def test_prepare_tiles_drops_empty_tiles_and_counts_cut_pieces() -> None:
    img = np.random.default_rng(1).random((1000, 1000)).astype(np.float32) + 0.1
    lab = np.zeros((1000, 1000), np.int32)
    lab[10:60, 10:60] = 1  # only in the tiles starting at row 0 / col 0
    # a U-shaped cell whose arms are joined below row 512: cut into 2 pieces by row tile 0
    lab[400:600, 900:910] = 2
    lab[400:600, 930:940] = 2
    lab[590:600, 900:940] = 2
    tiles, counts = prepare_tiles(img, lab, None, PrepSettings(clahe=False))
    assert counts["tiles_total"] == 9
    assert counts["disjoint_labels"] == 1  # object 2 in tile (0, 488)
    names = sorted(s for s, _, _ in tiles)
    assert names == ["_y0_x0", "_y384_x488", "_y488_x488"]
    assert counts["tiles_without_labels"] == 6 and counts["tiles_written"] == 3
    for _, im, lb in tiles:
        assert im.shape == (3, 512, 512) and lb.dtype == np.int32 and lb.max() == 1
        assert 0 <= im.min() and im.max() <= 1 and not im[0].any() and not im[1].any()


def test_rescale_pair_doubles_with_nearest_labels() -> None:
    lab = np.zeros((20, 30), np.int32)
    lab[2:6, 3:9] = 4
    lab[10:15, 10:20] = 9
    img, out = rescale_pair(np.random.default_rng(0).random((3, 20, 30)), lab, 2.0)
    assert img.shape == (3, 40, 60) and out.shape == (40, 60)
    assert sorted(np.unique(out)) == [0, 4, 9]
    assert (out == 4).sum() == 4 * (lab == 4).sum() and (out == 9).sum() == 4 * 50


def test_instances_to_label_overlap_rule() -> None:
    big = np.ones((10, 10), bool)
    small = np.ones((4, 4), bool)
    twin = np.ones((10, 9), bool)  # nearly a duplicate of `big`
    label, counts = instances_to_label([(0, 0, big), (2, 2, small), (0, 0, twin)], (12, 12))
    # small wins its 16 pixels; twin (smaller than big) wins 90 - 16; big keeps 10 px < 50%
    assert counts == {"overlap_pixels": 90, "overlap_dropped": 1}
    assert sorted(np.unique(label)) == [0, 2, 3]
    assert (label == 2).sum() == 16 and (label == 3).sum() == 90 - 16


def test_splits_80_10_10_by_group_seeded() -> None:
    groups = [f"g{i // 2}" for i in range(40)]  # 20 groups of 2 samples
    hashes = [f"h{i}" for i in range(40)]
    plan = assign_splits(groups, [None] * 40, hashes, seed=3)
    assert Counter(plan.splits) == {"train": 32, "val": 4, "test": 4}
    for g in set(groups):
        assert len({s for s, gg in zip(plan.splits, groups) if gg == g}) == 1
    assert plan.splits == assign_splits(groups, [None] * 40, hashes, seed=3).splits
    assert plan.splits != assign_splits(groups, [None] * 40, hashes, seed=4).splits
    tiny = assign_splits(["a", "b", "c", "d", "e"], [None] * 5, list("12345"))
    assert Counter(tiny.splits) == {"train": 3, "val": 1, "test": 1}


def test_splits_duplicates_conflicts_and_val_from_train() -> None:
    groups = ["a", "b", "c", "d", "e", "f", "g", "h"]
    given = ["train", "train", "train", "train", "test", "test", "train", "test"]
    hashes = ["1", "2", "3", "4", "5", "6", "7", "1"]  # h duplicates a -> both train
    plan = assign_splits(groups, given, hashes, seed=0)
    assert plan.splits[0] == plan.splits[7] == "train"
    assert plan.counts["duplicate_images_to_train"] == 2
    assert plan.splits[4:6] == ["test", "test"]
    assert Counter(plan.splits)["val"] == 1 and plan.counts["val_from_train_groups"] == 1
    conflict = assign_splits(["x", "x", "y"], ["train", "test", "test"], ["1", "2", "3"])
    assert conflict.splits == ["train", "train", "test"]
    assert conflict.counts["split_conflicts_to_train"] == 1
    train_only = assign_splits(list("abcde"), ["train"] * 5, list("12345"))
    assert Counter(train_only.splits) == {"train": 3, "val": 1, "test": 1}
    with pytest.raises(ValueError, match="unknown split"):
        assign_splits(["a"], ["validation"], ["1"])
