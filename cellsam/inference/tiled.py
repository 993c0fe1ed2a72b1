"""Large images: overlapping tiles, one segmentation per tile, cells merged across seams.

A *seam* is a tile side inside the image (not on the image border). A cell whose mask
reaches a seam side of its tile was cut there; one that does not is *whole*. With an
overlap wider than a cell, every cell is whole in at least one tile, so the merge is:

1. whole cells, most central first (largest distance to their tile's seams): accept unless
   a cell already accepted from another tile covers half of it or more (a duplicate);
2. cut pieces: dropped when an accepted cell covers half of the piece or more (the cell
   was found whole elsewhere); the rest are cells wider than the overlap (or found whole
   nowhere): pieces from different tiles that agree inside the area both tiles see
   (IoU >= `piece_iou` there) are joined into one cell (union of the pieces).

So a cell lying across a seam comes out once, whole, never cut along the tile edge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from cellsam.inference.postprocess import Cell
from cellsam.preprocess.tiling import tile_starts

Window = tuple[int, int, int, int]  # (y0, x0, y1, x1), exclusive ends


def tile_windows(height: int, width: int, tile: int, overlap: float) -> list[Window]:
    """Tiles covering an image, row by row; a side shorter than `tile` is one tile as long
    as the side (no padding: the predictor resizes every tile to the model input anyway)."""
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    return [(y, x, y + th, x + tw) for y in ys for x in xs]


def _shift(cell: Cell, dy: int, dx: int) -> Cell:
    return replace(cell, y0=cell.y0 + dy, x0=cell.x0 + dx,
                   box=cell.box + np.array([dx, dy, dx, dy], dtype=cell.box.dtype))


def _intersection(a: Cell, b: Cell, region: Window | None = None) -> tuple[int, int, int]:
    """Pixels of a & b (and of a, of b) inside `region` (whole image when None)."""
    ay0, ax0, ay1, ax1 = a.bbox
    by0, bx0, by1, bx1 = b.bbox
    ry0, rx0, ry1, rx1 = region or (-1 << 30, -1 << 30, 1 << 30, 1 << 30)
    y0, x0 = max(ay0, by0, ry0), max(ax0, bx0, rx0)
    y1, x1 = min(ay1, by1, ry1), min(ax1, bx1, rx1)
    if region is None:
        inter = 0
        if y0 < y1 and x0 < x1:
            ma = a.mask[y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0]
            mb = b.mask[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0]
            inter = int((ma & mb).sum())
        return inter, a.area, b.area

    def inside(c: Cell) -> int:
        cy0, cx0, cy1, cx1 = c.bbox
        yy0, xx0, yy1, xx1 = max(cy0, ry0), max(cx0, rx0), min(cy1, ry1), min(cx1, rx1)
        if yy0 >= yy1 or xx0 >= xx1:
            return 0
        return int(c.mask[yy0 - cy0:yy1 - cy0, xx0 - cx0:xx1 - cx0].sum())

    inter = 0
    if y0 < y1 and x0 < x1:
        ma = a.mask[y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0]
        mb = b.mask[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0]
        inter = int((ma & mb).sum())
    return inter, inside(a), inside(b)


def _boxes_overlap(a: Cell, b: Cell) -> bool:
    ay0, ax0, ay1, ax1 = a.bbox
    by0, bx0, by1, bx1 = b.bbox
    return ay0 < by1 and by0 < ay1 and ax0 < bx1 and bx0 < ax1


def _union(cells: Sequence[Cell]) -> Cell:
    """One cell from pieces: union of masks (max of logits), best score and IoU."""
    y0 = min(c.bbox[0] for c in cells)
    x0 = min(c.bbox[1] for c in cells)
    y1 = max(c.bbox[2] for c in cells)
    x1 = max(c.bbox[3] for c in cells)
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    with_logits = all(c.logits is not None for c in cells)
    logits = np.full(mask.shape, -np.inf, np.float32) if with_logits else None
    for c in cells:
        cy0, cx0, cy1, cx1 = c.bbox
        mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] |= c.mask
        if logits is not None:
            win = logits[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
            np.fmax(win, np.where(c.mask, c.logits, -np.inf), out=win)
    box = np.array([min(c.box[0] for c in cells), min(c.box[1] for c in cells),
                    max(c.box[2] for c in cells), max(c.box[3] for c in cells)], np.float32)
    return Cell(y0=y0, x0=x0, mask=mask, score=max(c.score for c in cells),
                iou=max(c.iou for c in cells), box=box, logits=logits)


class _GridIndex:
    """Cells bucketed by the `step`-px grid squares their boxes touch, so that finding the
    cells near a box costs O(neighbours), not O(all cells), in images with 10^4+ cells."""

    def __init__(self, step: int = 64) -> None:
        self.step = step
        self.buckets: dict[tuple[int, int], list[int]] = {}

    def _keys(self, cell: Cell):
        y0, x0, y1, x1 = cell.bbox
        st = self.step
        for gy in range(y0 // st, (y1 - 1) // st + 1):
            for gx in range(x0 // st, (x1 - 1) // st + 1):
                yield gy, gx

    def add(self, i: int, cell: Cell) -> None:
        for key in self._keys(cell):
            self.buckets.setdefault(key, []).append(i)

    def near(self, cell: Cell) -> set[int]:
        return {i for key in self._keys(cell) for i in self.buckets.get(key, ())}


def merge_tiles(tiles: Sequence[tuple[Window, list[Cell]]], image_hw: tuple[int, int],
                dup_cover: float = 0.5, piece_iou: float = 0.5) -> list[Cell]:
    """Merge per-tile cells (tile coordinates, tight crops) into image cells (see module doc).

    Returns cells in image coordinates: accepted whole cells (in tile order, then each
    tile's order), then joined pieces.
    """
    H, W = image_hw
    whole: list[tuple[float, int, int, Cell]] = []
    pieces: list[tuple[int, Cell]] = []
    for t, ((ty0, tx0, ty1, tx1), cells) in enumerate(tiles):
        seams = (ty0 > 0, tx0 > 0, ty1 < H, tx1 < W)  # top, left, bottom, right
        for i, cell in enumerate(cells):
            c = _shift(cell, ty0, tx0)
            cy0, cx0, cy1, cx1 = c.bbox
            gaps = (cy0 - ty0, cx0 - tx0, ty1 - cy1, tx1 - cx1)
            seam_gaps = [g for g, s in zip(gaps, seams) if s]
            if seam_gaps and min(seam_gaps) <= 0:
                pieces.append((t, c))
            else:
                whole.append((min(seam_gaps, default=float(max(H, W))), t, i, c))
    # 1. whole cells, most central first; ties: higher score, then tile order (stable)
    whole.sort(key=lambda e: (-e[0], -e[3].score))
    accepted: list[tuple[int, int, Cell]] = []
    index = _GridIndex()
    for _, t, i, c in whole:
        duplicate = False
        for j in index.near(c):
            ta, _, a = accepted[j]
            if ta == t or not _boxes_overlap(a, c):
                continue
            inter, area_a, area_c = _intersection(a, c)
            if inter >= dup_cover * min(area_a, area_c):
                duplicate = True
                break
        if not duplicate:
            index.add(len(accepted), c)
            accepted.append((t, i, c))
    # 2. pieces not explained by an accepted cell, joined across tiles
    rest: list[tuple[int, Cell]] = []
    for t, p in pieces:
        covered = any(_boxes_overlap(accepted[j][2], p)
                      and _intersection(accepted[j][2], p)[0] >= dup_cover * p.area
                      for j in index.near(p))
        if not covered:
            rest.append((t, p))
    parent = list(range(len(rest)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    rest_index = _GridIndex()
    for i, (_, p) in enumerate(rest):
        rest_index.add(i, p)
    for i, (ti, pi) in enumerate(rest):
        for j in sorted(rest_index.near(pi)):
            tj, pj = rest[j]
            if j <= i or ti == tj or not _boxes_overlap(pi, pj):
                continue
            wi, wj = tiles[ti][0], tiles[tj][0]
            shared = (max(wi[0], wj[0]), max(wi[1], wj[1]), min(wi[2], wj[2]), min(wi[3], wj[3]))
            inter, in_i, in_j = _intersection(pi, pj, shared)
            if inter > 0 and inter >= piece_iou * (in_i + in_j - inter):
                parent[find(j)] = find(i)
    groups: dict[int, list[Cell]] = {}
    for i, (_, p) in enumerate(rest):
        groups.setdefault(find(i), []).append(p)
    joined = [g[0] if len(g) == 1 else _union(g) for g in groups.values()]
    # tile order, then each tile's own order: one tile gives back exactly its input cells
    accepted.sort(key=lambda e: e[:2])
    return [c for _, _, c in accepted] + joined


def segment_tiled(image: np.ndarray, segment: Callable[[list[np.ndarray]], list[list[Cell]]],
                  tile: int, overlap: float, batch_size: int = 4) -> list[Cell]:
    """Segment a preprocessed image `[3, H, W]` tile by tile and merge the cells.

    `segment` maps a list of tile images `[3, th, tw]` to each tile's cells (tile
    coordinates, cleaned, tight crops); tiles go to it `batch_size` at a time.
    """
    H, W = image.shape[-2:]
    windows = tile_windows(H, W, tile, overlap)
    results: list[tuple[Window, list[Cell]]] = []
    for i in range(0, len(windows), batch_size):
        batch = windows[i:i + batch_size]
        crops = [image[:, y0:y1, x0:x1] for y0, x0, y1, x1 in batch]
        results.extend(zip(batch, segment(crops)))
    return merge_tiles(results, (H, W))
