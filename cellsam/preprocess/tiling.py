"""Fixed-size tiles and label filtering (paper, Appendix A).

- An image smaller than the tile size is zero-padded at the bottom and right.
- A larger image is cut into `tile x tile` tiles whose starts advance by
  `tile * (1 - overlap)` (384 px for 512 and 25%); the last tile is placed flush with the
  image's end, so every tile holds image content only (it overlaps its neighbour by 25% or
  more). A 1000-px side gives starts 0, 384, 488.
- Labels are filtered per tile: an object whose pixels form more than one connected piece
  (8-connectivity) is removed ("disjoint"), as is one whose bounding box is 1 px high or
  wide ("thin"); the survivors are renumbered 1..N in their original order. A cell cut by a
  tile border stays in each tile that sees it, as its visible part.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_label

TILE = 512
OVERLAP = 0.25


def tile_starts(length: int, tile: int = TILE, overlap: float = OVERLAP) -> list[int]:
    """Start offsets of the tiles along one axis of `length` pixels.

    `[0]` when `length <= tile` (the image is padded instead); otherwise steps of
    `round(tile * (1 - overlap))` and a last start of `length - tile`.
    """
    if length < 1 or tile < 1:
        raise ValueError(f"length and tile must be positive, got {length}, {tile}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if length <= tile:
        return [0]
    stride = max(1, int(round(tile * (1 - overlap))))
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad the last two axes of `image` (`[H, W]` or `[C, H, W]`) to at least `size`.

    Padding goes to the bottom and right; axes already `>= size` are left as they are.
    """
    h, w = image.shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph == 0 and pw == 0:
        return image
    pad = [(0, 0)] * (image.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(image, pad, mode="constant", constant_values=0)


@dataclass
class Tile:
    """One tile: its top-left corner in the (padded) image, image `[C, T, T]`, label `[T, T]`."""

    y0: int
    x0: int
    image: np.ndarray
    label: np.ndarray | None


def iter_tiles(
    image: np.ndarray,
    label: np.ndarray | None = None,
    tile: int = TILE,
    overlap: float = OVERLAP,
) -> Iterator[Tile]:
    """Pad `image` `[C, H, W]` (and `label` `[H, W]`) to `tile`, then yield its tiles row by row.

    Tiles are views into the padded arrays (copy before modifying).
    """
    if image.ndim != 3:
        raise ValueError(f"expected image [C, H, W], got shape {image.shape}")
    if label is not None and label.shape != image.shape[-2:]:
        raise ValueError(f"label shape {label.shape} != image shape {image.shape[-2:]}")
    image = pad_to(image, tile)
    label = None if label is None else pad_to(label, tile)
    h, w = image.shape[-2:]
    for y0 in tile_starts(h, tile, overlap):
        for x0 in tile_starts(w, tile, overlap):
            lab = None if label is None else label[y0 : y0 + tile, x0 : x0 + tile]
            yield Tile(y0, x0, image[:, y0 : y0 + tile, x0 : x0 + tile], lab)


def filter_labels(label: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Remove disjoint and 1-px-thin objects from `label` `[H, W]`; renumber to 1..N.

    Returns the int32 label image and `{"disjoint": n, "thin": m}` (an object that is both
    counts as disjoint).
    """
    lab = np.asarray(label)
    if lab.ndim != 2:
        raise ValueError(f"expected a label image [H, W], got shape {lab.shape}")
    if lab.dtype.kind not in "biu":
        raise ValueError(f"label dtype {lab.dtype} is not an integer type")
    lab = lab.astype(np.int64, copy=False)
    counts = {"disjoint": 0, "thin": 0}
    if lab.size == 0 or lab.max(initial=0) <= 0:
        return np.zeros(lab.shape, np.int32), counts
    if lab.min() < 0:
        raise ValueError("label image has negative values")
    # pieces: connected runs of equal non-zero value; an object with 2+ pieces is disjoint
    pieces = connected_label(lab, background=0, connectivity=2)
    owner = np.zeros(int(pieces.max()) + 1, dtype=np.int64)
    owner[pieces.ravel()] = lab.ravel()  # every pixel of a piece has the same object id
    n_ids = int(lab.max()) + 1
    n_pieces = np.bincount(owner[1:], minlength=n_ids)
    remove = n_pieces > 1
    counts["disjoint"] = int(remove.sum())
    for obj_id, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None or remove[obj_id]:
            continue
        if sl[0].stop - sl[0].start == 1 or sl[1].stop - sl[1].start == 1:
            remove[obj_id] = True
            counts["thin"] += 1
    # renumber the kept objects 1..N in id order (background and removed ids -> 0)
    keep = (n_pieces > 0) & ~remove
    keep[0] = False
    lut = np.zeros(n_ids, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[lab], counts


def training_tiles(image: np.ndarray, label: np.ndarray, tile: int = TILE,
                   overlap: float = OVERLAP) -> tuple[list[tuple[str, np.ndarray, np.ndarray]],
                                                      Counter]:
    """The tiles of a normalised image `[3, H, W]` and its labels `[H, W]` that a dataset keeps.

    Each tile's labels go through `filter_labels`; a tile left without labels, or whose
    whole-cell channel is blank, is dropped. Returns `(suffix, image [3, T, T], labels
    [T, T] int32)` per kept tile (suffix "" for an image that fits one tile, else
    `_y<y0>_x<x0>`) and the counts `tiles_total`, `disjoint_labels`, `thin_labels`,
    `tiles_without_labels`, `tiles_blank_image`, `tiles_written`.
    """
    counts: Counter = Counter()
    tiled = max(image.shape[1:]) > tile
    kept = []
    for t in iter_tiles(image, label, tile, overlap):
        counts["tiles_total"] += 1
        lab, removed = filter_labels(t.label)
        counts["disjoint_labels"] += removed["disjoint"]
        counts["thin_labels"] += removed["thin"]
        if lab.max(initial=0) == 0:
            counts["tiles_without_labels"] += 1
            continue
        if t.image[2].max() <= 0:
            counts["tiles_blank_image"] += 1
            continue
        suffix = f"_y{t.y0}_x{t.x0}" if tiled else ""
        kept.append((suffix, np.ascontiguousarray(t.image), lab))
    counts["tiles_written"] += len(kept)
    return kept, counts
