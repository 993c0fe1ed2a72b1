"""Batched box decoding and mask upsampling for the predictor and evaluation.

Two decoders give the same masks:
- `standard`: `CellSAM.decode` on batches of boxes. SAM's mask decoder repeats the whole
  image embedding (`[K, P, h, w]`) for every box and upsamples every mask over the whole
  low-resolution grid.
- `fast`: the same computation re-ordered (`decode_fast`). Three things need not be done
  per box: (1) in the first two-way block, the image tokens are identical for all boxes
  (no mask prompt), so their key/value projections for token->image attention and their
  query projection for image->token attention are computed once; (2) the IoU head only
  reads the IoU token, so boxes under the IoU threshold are dropped before any mask is
  made; (3) the mask head (transposed convs, LayerNorm2d, GELU, hypernetwork product) acts
  on each embedding cell independently, so it runs only on a window around each box.
  (1)-(2) are exact up to float rounding; (3) is exact inside the window, and pixels
  outside the window are background in both decoders whenever a margin is used.

Masks are upsampled straight from the low-res grid (`4h x 4w`) to the original image
size with bilinear interpolation (align_corners=False), as `F.interpolate` would, but only
on a window around each box (`box_windows`) unless the margin is None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cellsam.inference.postprocess import Cell
from cellsam.inference.settings import InferenceSettings
from cellsam.models.cellsam import CellSAM


@dataclass
class LowRes:
    """Low-res mask logits `[K, a, b]` on windows of the `grid` (`4h x 4w`) at `offset` `[K, 2]`
    (row, col); a window equal to the whole grid has offset 0."""

    logits: Tensor
    offset: Tensor
    grid: tuple[int, int]


def decode_batched(model: CellSAM, embedding: Tensor, boxes: Tensor, batch_size: int = 64
                   ) -> tuple[Tensor, Tensor]:
    """`CellSAM.decode` over chunks of `batch_size` boxes.

    embedding: `[1, P, h, w]`; boxes: `[K, 4]` xyxy input pixels.
    Returns low-res logits `[K, 4h, 4w]` and predicted IoU `[K]` (empty when K = 0).
    """
    if boxes.shape[0] == 0:
        h, w = embedding.shape[-2:]
        return embedding.new_zeros((0, 4 * h, 4 * w)), embedding.new_zeros((0,))
    parts = [model.decode(embedding, boxes[i:i + batch_size])
             for i in range(0, boxes.shape[0], batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def upsample_full(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Low-res logits `[K, a, b]` -> `[K, H, W]` (bilinear, align_corners=False)."""
    return F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


# -- windows ----------------------------------------------------------------------------------
def grown_boxes(boxes: Tensor, image_hw: tuple[int, int], margin: float | None) -> Tensor:
    """Each box's own mask window: `[K, 4]` int64 (y0, x0, y1, x1), exclusive ends.

    boxes: `[K, 4]` xyxy image pixels, grown by `margin` times their size plus 2 px on every
    side and clipped to the image; `margin=None` gives the whole image. A mask is kept only
    inside its own window, so the result never depends on which boxes share a batch.
    """
    H, W = image_hw
    k = boxes.shape[0]
    if margin is None or k == 0:
        return torch.tensor([[0, 0, H, W]], dtype=torch.long).expand(k, 4).clone()
    b = boxes.detach().float().cpu()
    bw, bh = (b[:, 2] - b[:, 0]).clamp_min(1), (b[:, 3] - b[:, 1]).clamp_min(1)
    x0 = torch.floor(b[:, 0] - margin * bw - 2).clamp(0, W - 1)
    y0 = torch.floor(b[:, 1] - margin * bh - 2).clamp(0, H - 1)
    x1 = torch.maximum(torch.ceil(b[:, 2] + margin * bw + 2).clamp(1, W), x0 + 1)
    y1 = torch.maximum(torch.ceil(b[:, 3] + margin * bh + 2).clamp(1, H), y0 + 1)
    return torch.stack([y0, x0, y1, x1], 1).long()


def box_windows(own: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """Same-sized windows `[K, 4]` (y0, x0, y1, x1) holding each of the `own` windows.

    All windows take the largest one's size (so they batch), placed at each window's own
    corner and shifted back inside the image.
    """
    H, W = image_hw
    if own.shape[0] == 0:
        return own.clone()
    wh = int(min(H, (own[:, 2] - own[:, 0]).max().item()))
    ww = int(min(W, (own[:, 3] - own[:, 1]).max().item()))
    y0 = torch.minimum(own[:, 0], torch.tensor(H - wh))
    x0 = torch.minimum(own[:, 1], torch.tensor(W - ww))
    return torch.stack([y0, x0, y0 + wh, x0 + ww], 1)


def _source_coords(start: Tensor, n: int, out_len: int, grid_len: int) -> Tensor:
    """Low-res coordinates `[K, n]` of output pixels `start + 0..n-1` (pixel centres)."""
    pix = start[:, None].float() + torch.arange(n, dtype=torch.float32)[None]
    return (pix + 0.5) * (grid_len / out_len) - 0.5


def lowres_windows(windows: Tensor, image_hw: tuple[int, int], grid: tuple[int, int],
                   cell: int = 4) -> Tensor:
    """Windows of the low-res grid, in whole embedding cells (`cell` low-res px each),
    covering what bilinear upsampling reads for each image window: `[K, 4]` (r0, c0, r1, c1)
    in low-res px, all of one size."""
    out = []
    for axis, (lo_i, hi_i) in enumerate(((0, 2), (1, 3))):
        n_out, n_grid = image_hw[axis], grid[axis]
        lo = _source_coords(windows[:, lo_i], 1, n_out, n_grid)[:, 0]
        hi = _source_coords(windows[:, hi_i] - 1, 1, n_out, n_grid)[:, 0]
        c0 = (torch.floor(lo).clamp(0, n_grid - 1) // cell).long()
        c1 = ((torch.floor(hi).clamp(0, n_grid - 1).long() + 1) // cell + 1)
        c1 = c1.clamp(max=n_grid // cell)
        size = int((c1 - c0).max().item())
        c0 = torch.minimum(c0, torch.tensor(n_grid // cell - size))
        out.append((c0 * cell, (c0 + size) * cell))
    (r0, r1), (c0, c1) = out
    return torch.stack([r0, c0, r1, c1], 1)


def upsample_windows(low: LowRes, windows: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """Sample low-res logits at the pixels of same-sized image windows.

    windows: `[K, 4]` (y0, x0, y1, x1) image pixels. Returns `[K, wh, ww]` logits equal (up
    to rounding) to `upsample_full(full_logits, image_hw)[:, y0:y1, x0:x1]`, provided each
    low-res window covers what the image window reads (see `lowres_windows`).
    """
    k = low.logits.shape[0]
    if k == 0:
        return low.logits.new_zeros((0, 0, 0))
    wh, ww = int(windows[0, 2] - windows[0, 0]), int(windows[0, 3] - windows[0, 1])
    a, b = low.logits.shape[-2:]
    gy = _source_coords(windows[:, 0], wh, image_hw[0], low.grid[0]).clamp(0, low.grid[0] - 1)
    gx = _source_coords(windows[:, 1], ww, image_hw[1], low.grid[1]).clamp(0, low.grid[1] - 1)
    gy = gy - low.offset[:, :1].float().cpu()
    gx = gx - low.offset[:, 1:].float().cpu()
    # grid_sample (align_corners=False) maps pixel p of a length-n axis to (2p + 1) / n - 1;
    # the clamp above reproduces F.interpolate's edge handling at the grid's true border.
    ny, nx = (2 * gy + 1) / a - 1, (2 * gx + 1) / b - 1
    grid = torch.stack([nx[:, None, :].expand(k, wh, ww), ny[:, :, None].expand(k, wh, ww)], -1)
    grid = grid.to(device=low.logits.device)
    # float32 whatever the autocast dtype: these logits are thresholded next
    out = F.grid_sample(low.logits[:, None].float(), grid, mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out[:, 0]


# -- the fast decoder -------------------------------------------------------------------------
def _heads(x: Tensor, n: int) -> Tensor:
    """`[B, T, C]` -> `[B, n, T, C / n]`."""
    b, t, c = x.shape
    return x.reshape(b, t, n, c // n).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """`[B, n, T, c]` -> `[B, T, n * c]`."""
    b, n, t, c = x.shape
    return x.transpose(1, 2).reshape(b, t, n * c)


def _attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Softmax attention with broadcasting over the batch (a shared side has batch 1)."""
    attn = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]), dim=-1)
    return attn @ v


@torch.no_grad()
def decode_fast(model: CellSAM, embedding: Tensor, boxes: Tensor,
                cell_windows: Tensor | None = None, iou_threshold: float | None = None
                ) -> tuple[LowRes, Tensor, Tensor]:
    """SAM's single-mask box decoding, re-ordered to share per-image work (see module doc).

    embedding: `[1, P, h, w]`; boxes: `[K, 4]` xyxy input pixels; cell_windows: `[K, 4]`
    (r0, c0, r1, c1) low-res px, multiples of 4, all one size (None: whole grid).
    Returns the low-res logits of the boxes whose predicted IoU passes `iou_threshold`,
    predicted IoU `[K]` of all boxes, and the kept indices `[K']`.
    """
    sam = model.sam
    dec, tr = sam.mask_decoder, sam.mask_decoder.transformer
    if embedding.dim() == 3:
        embedding = embedding[None]
    _, c, h, w = embedding.shape
    sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    k = sparse.shape[0]
    src = (embedding + dense[:1]).flatten(2).transpose(1, 2)  # [1, N, C], same for all boxes
    pe = sam.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2)  # [1, N, C]
    out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], 0)
    point_emb = torch.cat([out_tokens[None].expand(k, -1, -1), sparse], 1)  # [K, T, C]

    # First two-way block with the image side computed once (skip_first_layer_pe: no PE in
    # the first self-attention, as in SAM).
    blk = tr.layers[0]
    nh = blk.cross_attn_token_to_image.num_heads
    q = blk.self_attn(q=point_emb, k=point_emb, v=point_emb)
    q = blk.norm1(q)
    att = blk.cross_attn_token_to_image
    kk = _heads(att.k_proj(src + pe), nh)
    vv = _heads(att.v_proj(src), nh)
    qq = _heads(att.q_proj(q + point_emb), nh)
    q = blk.norm2(q + att.out_proj(_merge(_attend(qq, kk, vv))))
    q = blk.norm3(q + blk.mlp(q))
    att = blk.cross_attn_image_to_token
    qi = _heads(att.q_proj(src + pe), nh)  # [1, nh, N, c]: image tokens ask, shared
    kt = _heads(att.k_proj(q + point_emb), nh)
    vt = _heads(att.v_proj(q), nh)
    keys = blk.norm4(src + att.out_proj(_merge(_attend(qi, kt, vt))))  # [K, N, C]
    queries = q
    for blk in tr.layers[1:]:
        queries, keys = blk(queries=queries, keys=keys, query_pe=point_emb, key_pe=pe)
    att = tr.final_attn_token_to_image
    queries = tr.norm_final_attn(
        queries + att(q=queries + point_emb, k=keys + pe, v=keys))

    iou = dec.iou_prediction_head(queries[:, 0])[:, 0]  # single-mask output: token 0
    keep = torch.arange(k, device=iou.device)
    if iou_threshold is not None:
        keep = torch.nonzero(iou >= iou_threshold).flatten()
    grid = (4 * h, 4 * w)
    if keep.numel() == 0:
        return LowRes(embedding.new_zeros((0, 0, 0)), torch.zeros((0, 2), dtype=torch.long),
                      grid), iou, keep
    hyper = dec.output_hypernetworks_mlps[0](queries[keep, 1])  # [K', C/8]
    img = keys[keep].transpose(1, 2).reshape(-1, c, h, w)
    if cell_windows is None:
        offset = torch.zeros((keep.numel(), 2), dtype=torch.long)
    else:
        win = cell_windows[keep.cpu()] // 4
        rows = (win[:, 0:1] + torch.arange(int(win[0, 2] - win[0, 0]))).to(img.device)
        cols = (win[:, 1:2] + torch.arange(int(win[0, 3] - win[0, 1]))).to(img.device)
        idx = torch.arange(img.shape[0], device=img.device)[:, None, None, None]
        img = img[idx, torch.arange(c, device=img.device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]
        offset = win[:, :2] * 4
    up = dec.output_upscaling(img)  # [K', C/8, 4a, 4b]
    logits = (hyper[:, None, :] @ up.flatten(2)).view(up.shape[0], *up.shape[-2:])
    return LowRes(logits, offset, grid), iou, keep


# -- boxes -> cells ---------------------------------------------------------------------------
@torch.no_grad()
def decode_cells(model: CellSAM, embedding: Tensor, boxes: Tensor, scores: Tensor,
                 image_hw: tuple[int, int], settings: InferenceSettings) -> list[Cell]:
    """Decode one image's box prompts into thresholded single-cell masks (not yet cleaned).

    embedding: `[1, P, h, w]`; boxes: `[K, 4]` xyxy model-input pixels (`S x S`); scores:
    `[K]`. Masks come at the original `image_hw`, each on a window around its box (see
    `grown_boxes`). Boxes go through the decoder in batches of `settings.box_batch_size`,
    grouped by size so that each batch's shared window stays small; cells come back in
    the order of `boxes`, without those under the predicted-IoU threshold.
    """
    if boxes.shape[0] == 0:
        return []
    s_h, s_w = model.image_size, model.image_size
    H, W = image_hw
    grid = (4 * embedding.shape[-2], 4 * embedding.shape[-1])
    scale = boxes.new_tensor([W / s_w, H / s_h, W / s_w, H / s_h])
    boxes_img = (boxes * scale).float().cpu()
    sizes = torch.maximum(boxes_img[:, 2] - boxes_img[:, 0], boxes_img[:, 3] - boxes_img[:, 1])
    order = torch.argsort(sizes, stable=True)
    thr_logit = settings.mask_logit_threshold
    keep_logits = settings.overlap == "argmax"
    found: list[tuple[int, Cell]] = []
    for start in range(0, order.numel(), settings.box_batch_size):
        idx = order[start:start + settings.box_batch_size]
        own = grown_boxes(boxes_img[idx], image_hw, settings.mask_margin)
        windows = box_windows(own, image_hw)
        if settings.decoder == "fast":
            cells_win = (None if settings.mask_margin is None
                         else lowres_windows(windows, image_hw, grid))
            low, iou, keep = decode_fast(model, embedding, boxes[idx.to(boxes.device)],
                                         cells_win, settings.iou_threshold)
            keep = keep.cpu()
        else:
            logits, iou = model.decode(embedding, boxes[idx.to(boxes.device)])
            keep = torch.nonzero(iou >= settings.iou_threshold).flatten().cpu()
            low = LowRes(logits[keep.to(logits.device)],
                         torch.zeros((keep.numel(), 2), dtype=torch.long), grid)
        if keep.numel() == 0:
            continue
        win = windows[keep]
        up = upsample_windows(low, win, image_hw).float().cpu().numpy()
        iou_np = iou.float().cpu().numpy()
        for j, kk in enumerate(keep.tolist()):
            i = int(idx[kk])
            y0, x0, y1, x1 = own[kk].tolist()
            wy, wx = int(win[j, 0]), int(win[j, 1])
            crop = up[j, y0 - wy:y1 - wy, x0 - wx:x1 - wx]
            found.append((i, Cell(
                y0=y0, x0=x0, mask=crop > thr_logit, score=float(scores[i]),
                iou=float(iou_np[kk]), box=boxes_img[i].numpy(),
                logits=crop if keep_logits else None)))
    found.sort(key=lambda t: t[0])
    return [c for _, c in found]
