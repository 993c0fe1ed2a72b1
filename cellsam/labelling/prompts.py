"""Box and point prompts on one image window: the window an embedding is computed on,
coordinate changes between image and model input, SAM's prompt decoding, and the mask a
prompt gives.

Conventions (image side, as the rest of cellsam): boxes are `xyxy` pixel *edges*, `x1`/`y1`
exclusive (a box around pixels `c0..c1-1` is `(c0, r0, c1, r1)`); points are `(x, y)` with
integers at pixel *centres* (pixel `[r, c]` is the point `(c, r)`, as numpy indexing and
napari's layers place it). A window is `(y0, x0, y1, x1)`, exclusive ends. An embedding is
always that of a window resized to the model input `S x S` (aspect ratio not kept, as the
predictor resizes whole images and tiles), so model coordinates scale by `S / width` and
`S / height` separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from cellsam.inference.decode import (
    decode_fast,
    grown_boxes,
    lowres_windows,
    upsample_full,
    upsample_windows,
)
from cellsam.inference.postprocess import clean_mask
from cellsam.inference.settings import InferenceSettings
from cellsam.inference.tiled import tile_windows
from cellsam.models.cellsam import CellSAM
from cellsam.models.sam import decode_prompts

Window = tuple[int, int, int, int]  # (y0, x0, y1, x1), exclusive ends


@dataclass
class PromptState:
    """What the next click on a cell builds on: its window, prompt box, clicks so far
    (`points` `[N, 2]` x, y; `labels` `[N]`) and the low-res logits `[4h, 4w]` of its last
    decoding on that window's embedding."""

    window: Window
    box: np.ndarray | None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    logits: Tensor | None = None


@dataclass
class PromptResult:
    """The cell a prompt made: its id (None when the prompt gave an empty mask and nothing
    changed), its mask `[h, w]` bool at rows `y0:y0+h`, columns `x0:x0+w` (the region of
    `session.labels` a viewer needs to refresh, together with `changed`), SAM's
    predicted IoU and the window whose embedding was used."""

    cell_id: int | None
    y0: int
    x0: int
    mask: np.ndarray
    iou: float
    window: Window
    removed: tuple[int, ...] = ()  # cells the new mask covered entirely (now gone)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        h, w = self.mask.shape
        return self.y0, self.x0, self.y0 + h, self.x0 + w


# -- windows ------------------------------------------------------------------------------------
def check_box(box_xyxy, image_hw: tuple[int, int]) -> np.ndarray:
    """A box `[4]` float64 clipped to the image; raises `ValueError` when it is not finite
    or covers no pixel of the image."""
    box = np.asarray(box_xyxy, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.isfinite(box).all():
        raise ValueError(f"a box is 4 finite numbers (x0, y0, x1, y1), got {box_xyxy!r}")
    H, W = image_hw
    x0, x1 = sorted((box[0], box[2]))
    y0, y1 = sorted((box[1], box[3]))
    out = np.array([max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)])
    if out[2] - out[0] <= 0 or out[3] - out[1] <= 0:
        raise ValueError(f"box {box.tolist()} covers no pixel of the {H} x {W} image")
    return out


def points_box(points: np.ndarray) -> np.ndarray:
    """Box `[4]` (pixel edges) around points `[N, 2]` (pixel centres), N >= 1."""
    lo, hi = np.floor(points.min(0) + 0.5), np.floor(points.max(0) + 0.5) + 1
    return np.array([lo[0], lo[1], hi[0], hi[1]], np.float64)


def union_box(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """Smallest box `[4]` holding both (either may be None)."""
    if a is None or b is None:
        return b if a is None else a
    return np.array([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])])


def grow(box: np.ndarray, image_hw: tuple[int, int], margin: float | None) -> Window:
    """The region a box's mask may occupy: the box grown by `margin` times its size plus 2
    px, clipped (the predictor's rule, `grown_boxes`); `margin=None`: the whole image."""
    g = grown_boxes(torch.as_tensor(box, dtype=torch.float32)[None], image_hw, margin)[0]
    return tuple(int(v) for v in g.tolist())  # type: ignore[return-value]


def contains(window: Window, region: Window) -> bool:
    return (window[0] <= region[0] and window[1] <= region[1]
            and window[2] >= region[2] and window[3] >= region[3])


def choose_window(box: np.ndarray, image_hw: tuple[int, int], settings: InferenceSettings,
                  whole: bool) -> Window:
    """The window whose embedding serves a prompt around `box` `[4]`.

    `whole` (images the predictor segments untiled): the whole image, one embedding per
    image. Otherwise the predictor's tile (`tile_windows`) that holds the grown box most
    centrally, so a few embeddings serve every prompt in a region; a box too large for any
    tile gets a square window of its own, centred on it, shifted inside the image.
    """
    H, W = image_hw
    if whole:
        return (0, 0, H, W)
    need = grow(box, image_hw, settings.mask_margin)
    tiles = tile_windows(H, W, settings.tile_size, settings.tile_overlap)
    inside = [t for t in tiles if contains(t, need)]
    if inside:
        def slack(t: Window) -> int:
            return min(need[0] - t[0], need[1] - t[1], t[2] - need[2], t[3] - need[3])

        return max(inside, key=slack)  # first of the most central ones (tiles row by row)
    side = max(settings.tile_size, need[2] - need[0], need[3] - need[1])
    sh, sw = min(side, H), min(side, W)
    y0 = int(np.clip((need[0] + need[2] - sh) // 2, 0, H - sh))
    x0 = int(np.clip((need[1] + need[3] - sw) // 2, 0, W - sw))
    return (y0, x0, y0 + sh, x0 + sw)


# -- coordinates -----------------------------------------------------------------------------
def _scale(window: Window, size: int) -> tuple[float, float]:
    return size / (window[3] - window[1]), size / (window[2] - window[0])


def box_to_model(box: np.ndarray, window: Window, size: int) -> np.ndarray:
    """Image box `[4]` -> the box in the window's model input `S x S` (edges scale)."""
    sx, sy = _scale(window, size)
    y0, x0 = window[0], window[1]
    return np.array([(box[0] - x0) * sx, (box[1] - y0) * sy, (box[2] - x0) * sx,
                     (box[3] - y0) * sy], np.float32)


def points_to_model(points: np.ndarray, window: Window, size: int) -> np.ndarray:
    """Image points `[N, 2]` (x, y) -> model-input points, in SAM's convention (its prompt
    encoder adds half a pixel: the value given is the centre minus 0.5)."""
    sx, sy = _scale(window, size)
    x = (points[:, 0] - window[1] + 0.5) * sx - 0.5
    y = (points[:, 1] - window[0] + 0.5) * sy - 0.5
    return np.stack([x, y], 1).astype(np.float32)


# -- decoding -----------------------------------------------------------------------------------
def decode_prompt(model: CellSAM, embedding: Tensor, box: np.ndarray | None = None,
                  points: np.ndarray | None = None, labels: np.ndarray | None = None,
                  mask_logits: Tensor | None = None, multimask: bool = False
                  ) -> tuple[Tensor, float]:
    """SAM's decoder on one prompt: a box, clicks, a previous mask, or any mix.

    embedding: `[1, P, h, w]`; box: `[4]` model-input pixels; points `[N, 2]` model-input
    (x, y) with `labels` `[N]` (1 positive, 0 negative); mask_logits: `[4h, 4w]` low-res
    logits of an earlier decoding on the same embedding. `multimask`: decode SAM's three
    masks and keep the one with the highest predicted IoU (for an ambiguous single click);
    else the single-mask output, the one CellSAM trains.
    Returns low-res logits `[4h, 4w]` and the predicted IoU.
    """
    sam = model.sam
    dev = embedding.device
    pts = None
    if points is not None and len(points):
        pts = (torch.as_tensor(points, dtype=torch.float32, device=dev)[None],
               torch.as_tensor(labels, dtype=torch.int64, device=dev)[None])
    boxes = None if box is None else torch.as_tensor(box, dtype=torch.float32, device=dev)[None]
    masks = None if mask_logits is None else mask_logits.to(dev, torch.float32)[None, None]
    if pts is None and boxes is None:
        raise ValueError("a prompt needs a box or at least one point")
    low, iou = decode_prompts(sam, embedding, pts, boxes, masks, multimask)
    k = int(iou[0].float().argmax())
    return low[0, k].float(), float(iou[0, k])


@torch.no_grad()
def decode_box_fast(model: CellSAM, embedding: Tensor, box: np.ndarray, window: Window,
                    margin: float) -> tuple[np.ndarray, Window, Tensor, float]:
    """A box prompt through the predictor's fast decoder (`decode_fast`: the mask head and
    the upsampling only on the box's grown region, the same logits up to rounding).

    box: `[4]` xyxy image pixels inside `window`. Returns the logits `[h, w]` at the image
    pixels of the grown box `region` (image coordinates), the low-res logits `[4h, 4w]` of
    the whole grid (outside the computed window: its smallest value, i.e. background, as
    the mask shown there is) for a later click to build on, and the predicted IoU.
    """
    wy, wx = window[0], window[1]
    hw = (window[2] - wy, window[3] - wx)
    size = model.image_size
    grid = (4 * embedding.shape[-2], 4 * embedding.shape[-1])
    local = torch.as_tensor(box - np.array([wx, wy, wx, wy]), dtype=torch.float32)[None]
    own = grown_boxes(local, hw, margin)  # [1, 4] window px
    cells = lowres_windows(own, hw, grid)
    model_box = torch.as_tensor(box_to_model(box, window, size))[None].to(embedding.device)
    low, iou, _ = decode_fast(model, embedding, model_box, cells, None)
    up = upsample_windows(low, own, hw)[0].float().cpu().numpy()
    full = low.logits.new_full(grid, float(low.logits.min())).float()
    r0, c0 = (int(v) for v in low.offset[0])
    a, b = low.logits.shape[-2:]
    full[r0:r0 + a, c0:c0 + b] = low.logits[0].float()
    oy, ox, oy1, ox1 = (int(v) for v in own[0])
    return up, (wy + oy, wx + ox, wy + oy1, wx + ox1), full, float(iou[0])


def window_logits(logits: Tensor, window: Window) -> np.ndarray:
    """Low-res logits `[4h, 4w]` -> logits `[H_w, W_w]` at the window's image pixels
    (bilinear, as the predictor upsamples)."""
    y0, x0, y1, x1 = window
    return upsample_full(logits[None].float(), (y1 - y0, x1 - x0))[0].cpu().numpy()


def prompt_mask(logits: np.ndarray, y0: int, x0: int, settings: InferenceSettings,
                region: Window | None = None, positives: np.ndarray | None = None,
                negatives: np.ndarray | None = None) -> tuple[int, int, np.ndarray] | None:
    """The cell a decoding gives: `(y0, x0, mask [h, w])` tight in image coordinates, or
    None when nothing is left.

    `logits` `[h, w]` at image rows `y0:y0+h`, columns `x0:x0+w` are thresholded at
    `settings.mask_threshold`, cut to `region` (image window; None: all of them), then
    cleaned as the predictor cleans cells (largest island, holes filled) but with no
    minimum area: a person asked for this cell. Clicks (`positives`, `negatives` `[N, 2]`
    x, y image pixels) then get the last word: see `exclude_negatives`.
    """
    mask = logits > settings.mask_logit_threshold
    if region is not None:
        keep = np.zeros_like(mask)
        ry0, rx0 = max(region[0] - y0, 0), max(region[1] - x0, 0)
        keep[ry0:max(region[2] - y0, 0), rx0:max(region[3] - x0, 0)] = True
        mask &= keep
    loose = replace(settings, min_area=0)
    mask = clean_mask(mask, loose)
    if negatives is not None and len(negatives):
        shift = np.array([x0, y0], np.float64)
        pos = np.zeros((0, 2)) if positives is None else np.asarray(positives) - shift
        cut = exclude_negatives(mask, pos, np.asarray(negatives) - shift)
        if cut is not mask:
            mask = clean_mask(cut, replace(loose, fill_holes=False))
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return y0 + r0, x0 + c0, mask[r0:r1, c0:c1]


def _pixels(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Points `[N, 2]` (x, y) -> integer (row, col) `[M, 2]` of those on the array."""
    c = np.floor(np.asarray(points, np.float64).reshape(-1, 2) + 0.5).astype(np.int64)
    ok = (c[:, 0] >= 0) & (c[:, 1] >= 0) & (c[:, 0] < shape[1]) & (c[:, 1] < shape[0])
    return c[ok][:, ::-1]


def exclude_negatives(mask: np.ndarray, positives: np.ndarray, negatives: np.ndarray
                      ) -> np.ndarray:
    """A mask `[h, w]` that no negative click lies on (the same object when none does).

    A model trained on box prompts only (CellSAM's stage 2, LiteMedSAM) barely reacts to
    clicks, so a negative click that SAM left inside the mask splits it: a watershed of the
    mask's distance transform (its narrowest necks, where touching cells meet) from
    markers at the negative clicks and at the positive evidence, and the negatives' basins
    are dropped. The positive evidence: the positive clicks on the mask; without any, the
    deepest mask pixel outside every negative click's inscribed disc (and whose own disc
    does not hold the click), i.e. the middle of another lobe. Without either, each
    negative click removes its inscribed disc. Points are (x, y) in the mask's pixels.
    """
    from skimage.segmentation import watershed

    neg = _pixels(negatives, mask.shape)
    neg = neg[mask[neg[:, 0], neg[:, 1]]] if len(neg) else neg
    if len(neg) == 0:
        return mask
    dist = ndimage.distance_transform_edt(mask)
    pos = _pixels(positives, mask.shape)
    pos = pos[mask[pos[:, 0], pos[:, 1]]] if len(pos) else pos
    is_neg = np.zeros(mask.shape, bool)
    is_neg[neg[:, 0], neg[:, 1]] = True
    pos = pos[~is_neg[pos[:, 0], pos[:, 1]]] if len(pos) else pos
    rr, cc = np.indices(mask.shape)
    if len(pos) == 0:
        ok = mask.copy()
        for r, c in neg:
            gap = np.hypot(rr - r, cc - c)
            ok &= gap > np.maximum(dist, dist[r, c])
        if ok.any():
            pos = np.array([np.unravel_index(np.argmax(np.where(ok, dist, -1)), mask.shape)])
    if len(pos) == 0:
        out = mask.copy()
        for r, c in neg:
            out &= np.hypot(rr - r, cc - c) > max(dist[r, c] - 0.5, 0.5)
        return out
    markers = np.zeros(mask.shape, np.int32)
    markers[pos[:, 0], pos[:, 1]] = 1
    markers[neg[:, 0], neg[:, 1]] = 2
    basins = watershed(-dist, markers, mask=mask)
    return basins == 1


def choose_window_for_points(points: np.ndarray, box: np.ndarray | None,
                             image_hw: tuple[int, int], settings: InferenceSettings,
                             whole: bool) -> Window:
    """`choose_window` for a prompt made of a box (or none) and clicks `[N, 2]`."""
    return choose_window(union_box(box, points_box(points)), image_hw, settings, whole)


def inside(points: np.ndarray, window: Window) -> bool:
    """Whether every point `[N, 2]` (x, y) lies on a pixel of `window`."""
    c = np.floor(points + 0.5)
    return bool(((c[:, 0] >= window[1]) & (c[:, 0] < window[3])
                 & (c[:, 1] >= window[0]) & (c[:, 1] < window[2])).all())


__all__ = ["PromptResult", "PromptState", "Window", "box_to_model", "check_box",
           "choose_window", "choose_window_for_points", "contains", "decode_box_fast",
           "decode_prompt", "exclude_negatives", "grow", "inside", "points_box",
           "points_to_model", "prompt_mask", "union_box", "window_logits"]
