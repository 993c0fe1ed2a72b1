"""Box decoding speed: one box at a time (as the released code), batched, windowed, fast.

For 100 and 1000 box prompts on one image embedding, times three ways of going from boxes
to thresholded masks at the image size, in the same run, and prints seconds per image and
the ratios:

- `one-at-a-time`: `CellSAM.decode` per box, each mask upsampled over the whole image (the
  released package's loop);
- `batched`: `CellSAM.decode` on batches of boxes, masks upsampled over the whole image;
- `standard`: `decode_cells` with SAM's own decoder, masks upsampled only on a window
  around each box (the windowing without the re-ordered decoder);
- `fast`: `decode_cells` with the fast decoder (per-image work shared, IoU filter before the
  mask head, masks made and upsampled only on a window around each box).

It also reports how close the fast path is to full decoding: the largest difference of the
low-res logits, and the mean IoU of the final masks (fast windows vs whole-image masks).
The decoder's speed does not depend on its weights, so the default model is a random one
(its masks spread over the whole image, so its window IoU means nothing); `--ckpt` with
`--data` decodes a trained model on a stored image with its true boxes (meaningful IoU).

    python experiments/benchmarks/bench_decode.py                       # ViT-B decoder, 1024 px
    python experiments/benchmarks/bench_decode.py --variant tiny --boxes 100 1000
    python experiments/benchmarks/bench_decode.py --ckpt last.ckpt --data <dataset> --index 0
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cellsam.inference.decode import decode_batched, decode_cells, decode_fast, upsample_full
from cellsam.inference.settings import InferenceSettings
from cellsam.models.cellsam import CellSAM, build_cellsam


def random_boxes(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """`[n, 4]` xyxy boxes of 1-6 % of the image side (cell-sized), inside the image."""
    g = torch.Generator().manual_seed(seed)
    wh = (torch.rand(n, 2, generator=g) * 0.05 + 0.01) * size
    xy = torch.rand(n, 2, generator=g) * (size - wh)
    return torch.cat([xy, xy + wh], 1)


def timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def one_at_a_time(model: CellSAM, emb: torch.Tensor, boxes: torch.Tensor, hw, thr: float,
                  limit: int | None) -> float:
    """Seconds for all boxes, extrapolated from the first `limit` when given."""
    n = boxes.shape[0] if limit is None else min(limit, boxes.shape[0])
    t = time.perf_counter()
    for k in range(n):
        low, iou = model.decode(emb, boxes[k:k + 1])
        if float(iou[0]) >= thr:
            _ = (upsample_full(low, hw) > 0).numpy()
    return (time.perf_counter() - t) * boxes.shape[0] / n


def batched_full(model: CellSAM, emb: torch.Tensor, boxes: torch.Tensor, hw, thr: float,
                 batch: int) -> dict[int, np.ndarray]:
    """Box index -> whole-image mask, for boxes whose predicted IoU passes `thr`."""
    masks = {}
    for i in range(0, boxes.shape[0], batch):
        low, iou = model.decode(emb, boxes[i:i + batch])
        keep = torch.nonzero(iou >= thr).flatten()
        for k, m in zip(keep.tolist(), (upsample_full(low[keep], hw) > 0).numpy()):
            masks[i + k] = m
    return masks


def mask_iou_fast_vs_full(cells, full_masks: dict[int, np.ndarray]) -> float:
    """Mean IoU of each window mask with the whole-image mask of the same box (the cell's
    `score` holds its box index)."""
    ious = []
    for cell in cells:
        full = full_masks.get(int(cell.score))
        if full is None:  # predicted IoU on the threshold itself: kept by one path only
            continue
        fast = np.zeros_like(full)
        y0, x0, y1, x1 = cell.bbox
        fast[y0:y1, x0:x1] = cell.mask
        union = (fast | full).sum()
        ious.append(1.0 if union == 0 else (fast & full).sum() / union)
    return float(np.mean(ious)) if ious else float("nan")


def bench(boxes: torch.Tensor, model: CellSAM, emb: torch.Tensor, hw: tuple[int, int],
          args: argparse.Namespace) -> None:
    """Time the three paths for boxes `[n, 4]` (input px); print seconds per image, ratios."""
    n = boxes.shape[0]
    keep_all = -1e9  # a random decoder predicts any IoU: keep every mask in every path
    settings = InferenceSettings(iou_threshold=keep_all, mask_threshold=0.5, overlap="score",
                                 mask_margin=args.margin)
    scores = torch.arange(n, dtype=torch.float32)  # identifies each cell's box
    with torch.inference_mode():
        t_one = one_at_a_time(model, emb, boxes, hw, keep_all, args.one_limit)
        t_batch = {}
        for b in args.batch:
            t_batch[b], full = timed(lambda b=b: batched_full(model, emb, boxes, hw, keep_all, b),
                                     args.repeats)
        standard = {}
        for b in args.batch:
            cfg = replace(settings, box_batch_size=b, decoder="standard")
            standard[b], _ = timed(
                lambda cfg=cfg: decode_cells(model, emb, boxes, scores, hw, cfg), args.repeats)
        fast = {}
        for b in args.batch:
            cfg = replace(settings, box_batch_size=b, decoder="fast")
            fast[b], cells = timed(lambda cfg=cfg: decode_cells(model, emb, boxes, scores, hw, cfg),
                                   args.repeats)
        # exactness of the re-ordered decoder on the low-res logits (first 64 boxes)
        ref, _ = decode_batched(model, emb, boxes[:64])
        low, _, _ = decode_fast(model, emb, boxes[:64])
        diff = float((low.logits - ref).abs().max())
    miou = mask_iou_fast_vs_full(cells, full)
    scaled = args.one_limit is not None and args.one_limit < n
    extra = f" (timed on {args.one_limit} boxes, scaled)" if scaled else ""
    print(f"\n{n} boxes -> thresholded masks at image size, seconds per image:")
    print(f"  one at a time (released loop)  {t_one:8.2f}{extra}")
    for b in args.batch:
        print(f"  batched, {b:3d} boxes per call    {t_batch[b]:8.2f}   "
              f"one-at-a-time / batched = {t_one / t_batch[b]:.2f}x")
    for b in args.batch:
        print(f"  standard windowed, {b:3d} per call {standard[b]:8.2f}   "
              f"one-at-a-time / standard = {t_one / standard[b]:.2f}x")
    for b in args.batch:
        print(f"  fast, {b:3d} boxes per call       {fast[b]:8.2f}   "
              f"one-at-a-time / fast = {t_one / fast[b]:.2f}x, standard windowed / fast = "
              f"{standard[b] / fast[b]:.2f}x")
    print(f"  fast vs full decoding: max |low-res logit diff| {diff:.1e}; mean mask IoU "
          f"{miou:.4f} over {len(cells)} masks (window margin {settings.mask_margin})",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="vit_b", help="SAM size of the random model")
    ap.add_argument("--ckpt", default=None, help="trained checkpoint (uses its model)")
    ap.add_argument("--data", default=None, help="dataset folder: decode the true boxes of "
                    "one stored image (with --ckpt)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--boxes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 64],
                    help="boxes per decoder call")
    ap.add_argument("--image-size", type=int, default=None,
                    help="output image side (default: the model input size)")
    ap.add_argument("--one-limit", type=int, default=None,
                    help="time one-at-a-time on this many boxes and extrapolate")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--margin", type=float, default=0.5, help="fast path's mask window margin")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", 2)))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.simplefilter("ignore")
    images, true_boxes = None, None
    if args.ckpt:
        from cellsam.utils.checkpoint import load_model

        model, _ = load_model(args.ckpt)
        if args.data:
            from cellsam.data.format import open_split
            from cellsam.ops.masks import label_boxes_xyxy

            split = open_split(Path(args.data), args.split)
            images = torch.from_numpy(np.asarray(split.images[args.index:args.index + 1]))
            label = np.asarray(split.labels[args.index, 0])
            xyxy, _ = label_boxes_xyxy(label)
            scale = model.image_size / label.shape[-1]
            true_boxes = torch.from_numpy(xyxy) * scale
            images = torch.nn.functional.interpolate(images, size=(model.image_size,) * 2,
                                                     mode="bilinear", antialias=True)
    else:
        model = build_cellsam(sam={"variant": args.variant, "checkpoint": None},
                              finder={"num_queries": 8, "num_encoder_layers": 1,
                                      "num_decoder_layers": 1})
        images = None
    model.eval()
    s = model.image_size
    hw = (args.image_size or s,) * 2
    with torch.inference_mode():
        if images is not None:
            emb = model.embed(model.trunk(images.float()))
        else:
            h = s // 16
            emb = torch.randn(1, model.sam.prompt_encoder.embed_dim, h, h)
    print(f"model: {'checkpoint ' + args.ckpt if args.ckpt else 'random ' + args.variant}, "
          f"input {s} px, embedding {tuple(emb.shape[1:])}, masks at {hw[0]}x{hw[1]} px, "
          f"{args.threads} threads, load avg {os.getloadavg()[0]:.1f}")
    if true_boxes is not None:
        bench(true_boxes, model, emb, hw, args)
        return
    for n in args.boxes:
        bench(random_boxes(n, s), model, emb, hw, args)


if __name__ == "__main__":
    main()
