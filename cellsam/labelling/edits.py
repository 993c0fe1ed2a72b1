"""Edits of instance label images that a viewer's paint brush lacks: delete, merge, renumber,
paint one cell's mask.

Pure numpy: each function takes a label image `[H, W]` (integers, 0 = background, one
positive id per cell), never modifies it, and returns a new one of the same dtype and shape.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cellsam.ops.masks import object_ids


def _ids(ids: int | Iterable[int]) -> np.ndarray:
    if not isinstance(ids, (int, np.integer)):
        ids = list(ids)
    arr = np.asarray(ids, dtype=np.int64).ravel()
    if (arr <= 0).any():
        raise ValueError(f"cell ids must be positive, got {arr[arr <= 0].tolist()}")
    return np.unique(arr)


def _check(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise ValueError(f"expected an integer label image [H, W], got {labels.dtype} "
                         f"{labels.shape}")
    return labels


def next_id(labels: np.ndarray) -> int:
    """The id a new cell gets: one more than the largest id (gaps are never reused, so an
    id keeps meaning one cell during a session)."""
    return int(_check(labels).max(initial=0)) + 1


def delete_cells(labels: np.ndarray, ids: int | Iterable[int]) -> np.ndarray:
    """`labels` with the cells `ids` set to background; absent ids are ignored."""
    labels = _check(labels)
    return np.where(np.isin(labels, _ids(ids)), 0, labels).astype(labels.dtype, copy=False)


def merge_cells(labels: np.ndarray, ids: Iterable[int], into: int | None = None) -> np.ndarray:
    """`labels` with the cells `ids` (two or more) made one cell with id `into` (default:
    the smallest of `ids`). The cells need not touch; a merged cell made of separate pieces
    is kept here, but dropped when added to a training set (`data_prep`'s rule for
    disjoint objects)."""
    labels = _check(labels)
    ids = _ids(ids)
    if ids.size < 2:
        raise ValueError(f"merge needs at least two different cell ids, got {ids.tolist()}")
    target = int(ids.min()) if into is None else int(into)
    if target <= 0:
        raise ValueError(f"merge target id must be positive, got {target}")
    if target > np.iinfo(labels.dtype).max:
        raise ValueError(f"merge target id {target} does not fit the labels' {labels.dtype}")
    return np.where(np.isin(labels, ids), target, labels).astype(labels.dtype, copy=False)


def renumber(labels: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Cells renumbered 1..N in the order of their ids; returns the new labels and the
    mapping old id -> new id."""
    labels = _check(labels)
    ids = object_ids(labels)
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=labels.dtype)
    lut[ids] = np.arange(1, ids.size + 1)
    return lut[labels], {int(i): k + 1 for k, i in enumerate(ids)}


def paint_cell(labels: np.ndarray, mask: np.ndarray, y0: int, x0: int, cell_id: int,
               overwrite: bool = True, replace: bool = True) -> np.ndarray:
    """`labels` with `mask` `[h, w]` (bool, placed at rows `y0:y0+h`, columns `x0:x0+w`)
    painted as cell `cell_id`.

    `replace`: the cell's previous pixels are cleared first (a re-segmented cell);
    `overwrite`: the mask takes pixels from other cells (else it fills background only).
    """
    labels = _check(labels)
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    H, W = labels.shape
    if y0 < 0 or x0 < 0 or y0 + h > H or x0 + w > W:
        raise ValueError(f"mask {mask.shape} at ({y0}, {x0}) leaves the image {labels.shape}")
    if cell_id <= 0 or cell_id > np.iinfo(labels.dtype).max:
        raise ValueError(f"cell id {cell_id} must be positive and fit the labels' {labels.dtype}")
    out = labels.copy()
    if replace:
        out[out == cell_id] = 0
    win = out[y0:y0 + h, x0:x0 + w]
    take = mask if overwrite else mask & ((win == 0) | (win == cell_id))
    win[take] = cell_id
    return out


def cell_areas(labels: np.ndarray) -> dict[int, int]:
    """Pixels of each present cell id."""
    labels = _check(labels)
    counts = np.bincount(labels.ravel().astype(np.int64, copy=False))
    ids = np.flatnonzero(counts)
    return {int(i): int(counts[i]) for i in ids if i > 0}


__all__ = ["cell_areas", "delete_cells", "merge_cells", "next_id", "paint_cell", "renumber"]
