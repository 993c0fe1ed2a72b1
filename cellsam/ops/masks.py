"""Conversions between label images, per-object masks and COCO RLE annotations.

A label image is an integer array `[H, W]` with 0 for background and one positive id per
object. Everything here is numpy (plus pycocotools for RLE) so that data preparation,
metrics and inference share one implementation.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage


def object_ids(label: np.ndarray) -> np.ndarray:
    """Sorted positive ids present in `label` `[H, W]` -> `[N]`."""
    ids = np.unique(label)
    return ids[ids > 0]


def label_to_masks(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a label image `[H, W]` into boolean masks `[N, H, W]` and their ids `[N]`."""
    ids = object_ids(label)
    return label[None] == ids[:, None, None], ids


def label_dtype(n: int) -> type:
    """The label image dtype for ids up to `n`: uint16 up to 65535 objects, else uint32."""
    return np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32


def masks_to_label(masks: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """Paint boolean masks `[N, H, W]` into a label image `[H, W]` with ids 1..N.

    Masks are painted in `order` (default 0..N-1); a later mask overwrites an earlier one
    where they overlap, so the caller decides which object wins by the order it passes.
    """
    n = masks.shape[0]
    label = np.zeros(masks.shape[1:], dtype=label_dtype(n))
    for i in range(n) if order is None else order:
        label[masks[i]] = i + 1
    return label


def label_boxes_xyxy(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel boxes `[N, 4]` (x0, y0, x1, y1; x1/y1 exclusive) and ids `[N]` of a label image.

    One pass over the pixels via `ndimage.find_objects`, so it stays fast with thousands
    of objects.
    """
    label = np.asarray(label)
    if label.max(initial=0) <= 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    slices = ndimage.find_objects(label.astype(np.int64, copy=False))
    ids, boxes = [], []
    for i, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        ys, xs = sl
        ids.append(i)
        boxes.append((xs.start, ys.start, xs.stop, ys.stop))
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(ids, np.int64)


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a boolean mask `[H, W]`, with `counts` as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode_rle(rle: dict) -> np.ndarray:
    """Boolean mask `[H, W]` of a COCO RLE (counts as str or bytes)."""
    if isinstance(rle["counts"], str):
        rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def relabel_sequential(label: np.ndarray) -> np.ndarray:
    """Renumber the objects of `label` `[H, W]` to 1..N keeping their order; int32 output."""
    ids = object_ids(label)
    lut = np.zeros(int(label.max(initial=0)) + 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[label]
