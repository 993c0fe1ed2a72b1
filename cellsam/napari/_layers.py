"""napari layer data -> `LabellingSession` arguments (numpy only: no Qt, no napari import).

napari puts pixel centres at integer (row, col) coordinates, so pixel k spans
[k - 0.5, k + 0.5]; `LabellingSession` takes boxes as (x, y) pixel edges (pixel k spans
[k, k + 1]) and points as (x, y) pixel centres.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def to_image_rc(coords, src_scale: Sequence[float], src_translate: Sequence[float],
                dst_scale: Sequence[float], dst_translate: Sequence[float]) -> np.ndarray:
    """(row, col) data coordinates `[N, >=2]` of one layer -> those of another `[N, 2]`,
    through world coordinates (the last two axes' scale and translate; no rotation/shear)."""
    rc = np.asarray(coords, np.float64).reshape(len(coords), -1)[:, -2:]
    world = rc * np.asarray(src_scale, np.float64)[-2:] + np.asarray(src_translate)[-2:]
    return (world - np.asarray(dst_translate, np.float64)[-2:]) / np.asarray(dst_scale)[-2:]


def rectangle_to_box(vertices_rc) -> np.ndarray:
    """A rectangle's vertices `[4, 2]` (row, col) -> its box `[4]` (x0, y0, x1, y1) in
    pixel edges: a rectangle from -0.5 to 9.5 covers pixels 0..9, the box (0, 0, 10, 10)."""
    v = np.asarray(vertices_rc, np.float64)
    if v.ndim != 2 or v.shape[0] < 2 or v.shape[1] < 2 or not np.isfinite(v).all():
        raise ValueError(f"a rectangle is vertices [N >= 2, 2] (row, col), got shape "
                         f"{v.shape}")
    (r0, c0), (r1, c1) = v[:, -2:].min(0), v[:, -2:].max(0)
    return np.array([c0 + 0.5, r0 + 0.5, c1 + 0.5, r1 + 0.5])


def points_to_xy(points_rc) -> np.ndarray:
    """Points `[N, 2]` (row, col) -> `[N, 2]` (x, y) pixel centres."""
    p = np.asarray(points_rc, np.float64).reshape(len(points_rc), -1)[:, -2:]
    return p[:, ::-1].copy()


def image_layout(shape: Sequence[int], rgb: bool) -> tuple[int, int | None]:
    """(channels, channel axis) of an image layer's data: `[H, W]` -> (1, None); RGB(A)
    `[H, W, C]` -> (C, -1); a stack `[C, H, W]` (napari shows C as a slider) -> (C, 0)."""
    if len(shape) == 2:
        return 1, None
    if len(shape) == 3:
        return (int(shape[-1]), -1) if rgb else (int(shape[0]), 0)
    raise ValueError(f"an image layer of shape {tuple(shape)}: cellsam takes one 2-D image "
                     "with channels ([H, W], [H, W, C] or [C, H, W])")


def channel_map(nuclear: int | None, whole_cell: int | None) -> dict[str, int] | None:
    """The session's `channels` argument from two choices (None: not chosen); with neither
    chosen, None: one channel goes to whole-cell, several are averaged."""
    out = {k: v for k, v in (("nuclear", nuclear), ("whole_cell", whole_cell))
           if v is not None}
    return out or None


def parse_ids(text: str) -> list[int]:
    """'3, 4' or '3 4' -> [3, 4]; raises `ValueError` naming the bad entry."""
    ids = []
    for part in text.replace(",", " ").split():
        if not part.isdigit() or int(part) == 0:
            raise ValueError(f"cell ids are positive integers; got {part!r} in {text!r}")
        ids.append(int(part))
    return ids


__all__ = ["channel_map", "image_layout", "parse_ids", "points_to_xy", "rectangle_to_box",
           "to_image_rc"]
