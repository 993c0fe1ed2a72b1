"""Real label images and perturbed copies of them, for checking metrics against the
reference packages (imported by tests/unit/test_metrics_{cellpose,panoptic,sa}.py).

`real_pairs(shared_data)` gives (name, y_true, y_pred) for the first N_IMAGES DSB 2018
label images (sorted by file name, >= 5 nuclei) and seven predictions of each: the
truth itself, shifted by (2, 3) px, eroded by 2 px, two touching neighbours merged,
the largest object split in two, 20 % of the objects dropped, and all of shift + split +
drop with scrambled non-contiguous ids.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

N_IMAGES = 20


def paint(*rects: tuple[int, int, int, int, int], shape=(12, 16)) -> np.ndarray:
    """Label image from (id, y0, y1, x0, x1) rectangles, later ones on top."""
    lab = np.zeros(shape, np.int64)
    for i, y0, y1, x0, x1 in rects:
        lab[y0:y1, x0:x1] = i
    return lab


# The hand-counted scene: three 4x4 squares on a 12x16 canvas, ids 1 (rows 0-3, cols 0-3),
# 2 (rows 0-3, cols 4-7, touching 1), 3 (rows 6-9, cols 8-11). Prediction: 1 exact (IoU 1),
# 2 shifted right by 1 (IoU 12 / 20 = 0.6), 3 missed, a 3x3 false blob.
TRUE = paint((1, 0, 4, 0, 4), (2, 0, 4, 4, 8), (3, 6, 10, 8, 12))
PRED = paint((5, 0, 4, 0, 4), (9, 0, 4, 5, 9), (4, 8, 11, 0, 3))
EMPTY = np.zeros_like(TRUE)
PERTURBATIONS = ("identity", "shift", "erode", "merge", "split", "drop", "mixed")


def shift(lab: np.ndarray, dy: int = 2, dx: int = 3) -> np.ndarray:
    """Translate by (dy, dx) px (dy, dx >= 0), filling the uncovered border with 0."""
    out = np.zeros_like(lab)
    out[dy:, dx:] = lab[: lab.shape[0] - dy, : lab.shape[1] - dx]
    return out


def erode(lab: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Keep a pixel only where its 4 neighbours carry the same id (per step)."""
    out = lab.copy()
    for _ in range(iterations):
        p = np.pad(out, 1)
        c = p[1:-1, 1:-1]
        keep = (
            (p[:-2, 1:-1] == c) & (p[2:, 1:-1] == c) & (p[1:-1, :-2] == c) & (p[1:-1, 2:] == c)
        )
        out = np.where(keep, c, 0)
    return out


def merge_neighbours(lab: np.ndarray) -> np.ndarray:
    """Give two objects one id: the most touching pair, else the two nearest centroids."""
    a = np.concatenate([lab[:, :-1].ravel(), lab[:-1, :].ravel()])
    b = np.concatenate([lab[:, 1:].ravel(), lab[1:, :].ravel()])
    touch = (a != b) & (a > 0) & (b > 0)
    out = lab.copy()
    if touch.any():
        pairs, counts = np.unique(
            np.stack([np.minimum(a, b)[touch], np.maximum(a, b)[touch]], 1),
            axis=0, return_counts=True,
        )
        keep, gone = pairs[np.argmax(counts)]
    else:
        ids = np.unique(lab[lab > 0])
        yy, xx = np.nonzero(lab)
        cy = np.bincount(lab[yy, xx], yy)[ids] / np.bincount(lab[yy, xx])[ids]
        cx = np.bincount(lab[yy, xx], xx)[ids] / np.bincount(lab[yy, xx])[ids]
        d = np.hypot(cy[:, None] - cy, cx[:, None] - cx) + np.eye(ids.size) * 1e9
        i, j = np.unravel_index(np.argmin(d), d.shape)
        keep, gone = ids[i], ids[j]
    out[out == gone] = keep
    return out


def split_largest(lab: np.ndarray) -> np.ndarray:
    """Cut the largest object in two at its median column (right part gets a new id)."""
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    big = ids[np.argmax(counts)]
    ys, xs = np.nonzero(lab == big)
    right = xs > np.median(xs)
    out = lab.copy()
    out[ys[right], xs[right]] = lab.max() + 1
    return out


def drop(lab: np.ndarray, frac: float = 0.2, seed: int = 0) -> np.ndarray:
    """Delete `frac` of the objects (at least one), chosen at random."""
    ids = np.unique(lab[lab > 0])
    gone = np.random.default_rng(seed).choice(ids, max(1, int(frac * ids.size)), replace=False)
    return np.where(np.isin(lab, gone), 0, lab)


def scramble(lab: np.ndarray, seed: int = 0) -> np.ndarray:
    """Same objects, ids permuted and made non-contiguous (3 k + 7)."""
    ids = np.unique(lab[lab > 0])
    lut = np.zeros(int(lab.max()) + 1, np.int64)
    lut[ids] = np.random.default_rng(seed).permutation(ids.size) * 3 + 7
    return lut[lab]


def perturb(lab: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    if kind == "identity":
        return lab.copy()
    if kind == "shift":
        return shift(lab)
    if kind == "erode":
        return erode(lab)
    if kind == "merge":
        return merge_neighbours(lab)
    if kind == "split":
        return split_largest(lab)
    if kind == "drop":
        return drop(lab, seed=seed)
    if kind == "mixed":
        return scramble(drop(split_largest(shift(lab, 1, 2)), seed=seed + 1), seed)
    raise ValueError(kind)


@lru_cache(maxsize=2)
def _truths(root: str) -> tuple[tuple[str, np.ndarray], ...]:
    import tifffile

    out = []
    for f in sorted((Path(root) / "dsb2018_fixed" / "labels").glob("*.tif")):
        lab = np.asarray(tifffile.imread(f)).astype(np.int64)
        if np.unique(lab[lab > 0]).size >= 5:
            out.append((f.stem[:8], lab))
        if len(out) == N_IMAGES:
            break
    return tuple(out)


def real_pairs(shared_data: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, y_true, y_pred) for N_IMAGES real truths x PERTURBATIONS, all int64."""
    truths = _truths(str(shared_data))
    if not truths:
        import pytest

        pytest.skip("no DSB 2018 label images under shared/data/dsb2018_fixed/labels")
    return [
        (f"{name}:{kind}", lab, perturb(lab, kind, seed=i))
        for i, (name, lab) in enumerate(truths)
        for kind in PERTURBATIONS
    ]
