"""Tiling and seam merging: every cell comes out once and whole, wherever the seams fall.

The segmenter here is exact and scale-free (it reads the true labels hidden in the tile's
first channel), so tiled and untiled segmentations must agree pixel for pixel, and any
cut, loss or duplicate is the merge's fault.
"""

from __future__ import annotations

import numpy as np
import pytest

from cellsam.inference.postprocess import Cell, compose_labels
from cellsam.inference.tiled import merge_tiles, segment_tiled, tile_windows

TILE, OVERLAP = 512, 0.25


def oracle(crops: list[np.ndarray]) -> list[list[Cell]]:
    """Cells of each crop `[3, h, w]` whose channel 0 holds the true label image."""
    out = []
    for crop in crops:
        lab = crop[0].astype(np.int64)
        cells = []
        for obj in np.unique(lab[lab > 0]):
            ys, xs = np.nonzero(lab == obj)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            mask = lab[y0:y1, x0:x1] == obj
            cells.append(Cell(y0=int(y0), x0=int(x0), mask=mask, score=0.5 + 1e-4 * obj,
                              iou=0.9, box=np.array([x0, y0, x1, y1], np.float32),
                              logits=mask.astype(np.float32)))
        out.append(cells)
    return out


def seam_positions(length: int) -> list[int]:
    """Interior tile edges along one axis."""
    edges = set()
    for y0, _, y1, _ in tile_windows(length, 1, TILE, OVERLAP):
        edges.update({y0, y1})
    return sorted(e for e in edges if 0 < e < length)


def draw_disk(label: np.ndarray, cy: int, cx: int, r: int, value: int) -> bool:
    yy, xx = np.ogrid[: label.shape[0], : label.shape[1]]
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if (label[disk] != 0).any() or not disk.any():
        return False
    label[disk] = value
    return True


def seam_image(height: int = 1000, width: int = 1200, seed: int = 0) -> np.ndarray:
    """Labels with disks centred on every seam (rows and columns) and on seam crossings,
    plus one bar wider than the overlap that crosses two seams (cut in every tile)."""
    rng = np.random.default_rng(seed)
    label = np.zeros((height, width), np.int32)
    n = 0
    ys, xs = seam_positions(height), seam_positions(width)
    label[150:190, 350:540] = n = n + 1  # crosses x = 384 and x = 512: no tile holds it whole
    centres = [(y, x) for y in ys for x in xs]  # crossings
    centres += [(y, int(x)) for y in ys for x in rng.uniform(30, width - 30, 8)]
    centres += [(int(y), x) for x in xs for y in rng.uniform(30, height - 30, 8)]
    for cy, cx in centres:
        if draw_disk(label, cy + int(rng.integers(-2, 3)), cx + int(rng.integers(-2, 3)),
                     int(rng.integers(8, 30)), n + 1):
            n += 1
    return label


def as_image(label: np.ndarray) -> np.ndarray:
    return np.stack([label.astype(np.float32)] * 3)


def assert_same_objects(pred: np.ndarray, true: np.ndarray) -> None:
    """Same objects, pixel for pixel, up to renumbering (each true cell once, whole)."""
    true_ids = np.unique(true[true > 0])
    assert len(np.unique(pred[pred > 0])) == len(true_ids), "cells lost or duplicated"
    for obj in true_ids:
        hit = np.unique(pred[true == obj])
        assert len(hit) == 1 and hit[0] > 0, f"cell {obj} split or lost: {hit}"
        assert ((pred == hit[0]) == (true == obj)).all(), f"cell {obj} not whole"


def test_tile_windows_cover_image():
    wins = tile_windows(1000, 1200, TILE, OVERLAP)
    cover = np.zeros((1000, 1200), int)
    for y0, x0, y1, x1 in wins:
        assert y1 - y0 == TILE and x1 - x0 == TILE
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    assert tile_windows(300, 700, TILE, OVERLAP) == [(0, 0, 300, 512), (0, 188, 300, 700)]


def test_cells_across_every_seam_come_out_once_and_whole():
    label = seam_image()
    assert label.max() > 40
    for y in seam_positions(label.shape[0]):  # every seam really is crossed by cells
        assert ((label[y - 1] == label[y]) & (label[y] > 0)).sum() > 50
    for x in seam_positions(label.shape[1]):
        assert ((label[:, x - 1] == label[:, x]) & (label[:, x] > 0)).sum() > 50
    cells = segment_tiled(as_image(label), oracle, TILE, OVERLAP, batch_size=3)
    pred, _ = compose_labels(cells, label.shape, "score")
    assert_same_objects(pred, label)


@pytest.mark.parametrize("seed", [1, 2])
def test_tiled_equals_untiled_random_cells(seed):
    rng = np.random.default_rng(seed)
    label = np.zeros((1300, 1500), np.int32)
    n = 0
    for _ in range(400):  # diameters up to 100 px < the 128 px overlap
        if draw_disk(label, int(rng.integers(0, 1300)), int(rng.integers(0, 1500)),
                     int(rng.integers(5, 50)), n + 1):
            n += 1
    image = as_image(label)
    untiled, _ = compose_labels(oracle([image])[0], label.shape, "score")
    tiled, _ = compose_labels(segment_tiled(image, oracle, TILE, OVERLAP), label.shape, "score")
    assert_same_objects(untiled, label)
    assert_same_objects(tiled, label)


def test_one_tile_returns_its_cells_unchanged():
    label = seam_image(400, 450)
    (cells,) = oracle([as_image(label)])
    merged = merge_tiles([((0, 0, 400, 450), cells)], (400, 450))
    assert [(c.y0, c.x0, c.area) for c in merged] == [(c.y0, c.x0, c.area) for c in cells]


def test_duplicates_keep_the_most_central_copy():
    # one cell at image columns 395..404, seen whole by two tiles: 7 px from tile A's
    # seam (x = 412), 15 px from tile B's (x = 380); tile B's copy must win
    mask = np.ones((10, 10), bool)
    tile_a, tile_b = (0, 0, 512, 412), (0, 380, 512, 892)
    a = Cell(5, 395, mask, 0.9, 0.9, np.zeros(4, np.float32))
    b = Cell(5, 395 - 380, mask.copy(), 0.1, 0.9, np.zeros(4, np.float32))
    merged = merge_tiles([(tile_a, [a]), (tile_b, [b])], (512, 892))
    assert len(merged) == 1 and merged[0].score == 0.1  # from tile B, the central one
