"""Speed of cellsam.metrics on dense synthetic label images.

Builds 512x512 label images with about 1000 touching round cells (a Voronoi tessellation
of random seeds, cut to a radius around each seed) and a perturbed prediction of each
(1-px shift, some cells deleted, merged, split, plus false blobs), then times:

1. F1 at the 10 IoU thresholds 0.50..0.95 and the DeepCell object metrics, ours versus
   a straightforward implementation written here (one boolean mask per object, IoU per
   candidate pair, dense `linear_sum_assignment`; for DeepCell the toolbox's full
   (n_true + n_pred)^2 augmented matrix and a graph of the leftovers). Both must give
   the same counts; the script checks it.
2. Ours alone on a 2048x2048 image with 16x the cells.
3. COCO segm and bbox evaluation of N such images (default 100) with each backend.

Usage: python experiments/benchmarks/bench_metrics.py [--cells 1000] [--coco-images 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from cellsam.metrics import (
    DEFAULT_THRESHOLDS,
    coco_gt_from_labels,
    deepcell_counts,
    detections_from_label,
    evaluate_coco,
    match_counts,
)


def tessellation(size: int, n_cells: int, rng: np.random.Generator) -> np.ndarray:
    """Label image `[size, size]`: nearest-seed cells, cut to ~1.1x the mean radius."""
    seeds = rng.uniform(0, size, (n_cells, 2))
    yy, xx = np.mgrid[:size, :size]
    dist, idx = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], 1))
    radius = 1.1 * size / np.sqrt(np.pi * n_cells)
    lab = np.where(dist <= radius, idx + 1, 0).reshape(size, size)
    return lab.astype(np.int32)


def perturb(lab: np.ndarray, rng: np.random.Generator, rate: float = 0.03) -> np.ndarray:
    """Prediction-like copy: shift, deletions, merges with a neighbour, splits, blobs."""
    p = np.roll(lab, (1, 0), (0, 1)).astype(np.int64)
    ids = np.unique(p[p > 0])
    k = max(1, int(rate * ids.size))
    lut = np.arange(p.max() + 1)
    lut[rng.choice(ids, k, replace=False)] = 0  # deleted
    right = p[:, 1:][(p[:, :-1] != p[:, 1:]) & (p[:, :-1] > 0) & (p[:, 1:] > 0)]
    left = p[:, :-1][(p[:, :-1] != p[:, 1:]) & (p[:, :-1] > 0) & (p[:, 1:] > 0)]
    for j in rng.choice(left.size, min(k, left.size), replace=False):
        if lut[left[j]] and lut[right[j]]:
            lut[right[j]] = lut[left[j]]  # merged into its neighbour
    p = lut[p]
    nxt = p.max() + 1
    for i in rng.choice(np.unique(p[p > 0]), k, replace=False):
        ys, xs = np.nonzero(p == i)
        half = xs > np.median(xs)
        p[ys[half], xs[half]] = nxt  # split in two
        nxt += 1
    for _ in range(k):
        y, x = rng.integers(0, p.shape[0] - 8, 2)
        p[y : y + 6, x : x + 6] = nxt  # false blob
        nxt += 1
    u = np.unique(p[p > 0])
    perm = np.zeros(p.max() + 1, np.int64)
    perm[u] = rng.permutation(u.size) * 3 + 7  # scrambled, non-contiguous ids
    return perm[p]


# ---- straightforward implementations (reference for speed and for the numbers) ----


def naive_iou(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Dense IoU `[n_true, n_pred]`, one boolean mask per object and candidate."""
    tid, pid = np.unique(t[t > 0]), np.unique(p[p > 0])
    col = {v: j for j, v in enumerate(pid)}
    pred_masks = {}
    iou = np.zeros((tid.size, pid.size))
    for i, a in enumerate(tid):
        mt = t == a
        for b in np.unique(p[mt]):
            if b == 0:
                continue
            if b not in pred_masks:
                pred_masks[b] = p == b
            mp = pred_masks[b]
            iou[i, col[b]] = np.sum(mt & mp) / np.sum(mt | mp)
    return iou


def naive_f1_tp(t: np.ndarray, p: np.ndarray, thresholds) -> list[int]:
    iou = naive_iou(t, p)
    out = []
    for th in thresholds:
        cost = -(iou >= th).astype(float) - iou / (2 * min(iou.shape))
        r, c = linear_sum_assignment(cost)
        out.append(int(np.sum(iou[r, c] >= th)))
    return out


def naive_deepcell(t: np.ndarray, p: np.ndarray, c1: float = 0.4, c2: float = 0.1):
    """The toolbox's algorithm as written: augmented matrix, then leftovers' graph."""
    iou = naive_iou(t, p)
    tid, pid = np.unique(t[t > 0]), np.unique(p[p > 0])
    mod = iou.copy()
    for i, j in zip(*np.nonzero((iou > 0) & (iou < 1 - c1))):
        mt, mp = t == tid[i], p == pid[j]
        inter = np.sum(mt & mp)
        if iou[i, j] <= c1 and max(inter / mt.sum(), inter / mp.sum()) > 0.5:
            mod[i, j] = c2
    n_t, n_p = iou.shape
    n = n_t + n_p
    cost = np.ones((n, n))
    cost[:n_t, :n_p] = 1 - mod
    cost[n_t:, n_p:] = (1 - mod).T
    cost[n_t:, :n_p] = c1 * np.eye(n_p) + 1 - np.eye(n_p)
    cost[:n_t, n_p:] = c1 * np.eye(n_t) + 1 - np.eye(n_t)
    r, c = linear_sum_assignment(cost)
    correct = int(np.sum((r < n_t) & (c < n_p)))
    missed = r[(r < n_t) & (c >= n_p)]
    gained = c[(r >= n_t) & (c < n_p)]
    sub = mod[np.ix_(missed, gained)] >= c2
    ii, jj = np.nonzero(sub)
    m = missed.size + gained.size
    g = coo_matrix((np.ones(ii.size), (ii, jj + missed.size)), shape=(m, m))
    _, comp = connected_components(g, directed=False)
    kt = np.bincount(comp[: missed.size], minlength=comp.max(initial=-1) + 1)
    kp = np.bincount(comp[missed.size :], minlength=kt.size)
    cata = int(np.sum((kt >= 2) & (kp >= 2)))
    return correct + cata, int(np.sum((kt == 1) & (kp >= 2))), int(np.sum((kt >= 2) & (kp == 1)))


def clock(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3, help="best of N for our timings")
    ap.add_argument("--coco-images", type=int, default=100)
    ap.add_argument("--skip-large", action="store_true", help="skip the 2048x2048 run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    t = tessellation(args.size, args.cells, rng)
    p = perturb(t, rng)
    n_t, n_p = np.unique(t[t > 0]).size, np.unique(p[p > 0]).size
    print(f"image {args.size}x{args.size}: {n_t} true cells, {n_p} predicted")

    ours_f1_s, ours = clock(lambda: match_counts(t, p, DEFAULT_THRESHOLDS), args.repeats)
    naive_f1_s, naive = clock(lambda: naive_f1_tp(t, p, DEFAULT_THRESHOLDS), 1)
    assert [c.tp for c in ours] == naive, (ours, naive)
    print(f"F1 @ 10 thresholds  ours {ours_f1_s:8.4f} s   naive {naive_f1_s:8.3f} s   "
          f"speed-up x{naive_f1_s / ours_f1_s:,.0f}   (F1@0.5 = {ours[0].f1:.4f})")

    ours_dc_s, dc = clock(lambda: deepcell_counts(t, p), args.repeats)
    naive_dc_s, ndc = clock(lambda: naive_deepcell(t, p), 1)
    assert (dc.correct, dc.splits, dc.merges) == ndc, (dc, ndc)
    print(f"DeepCell            ours {ours_dc_s:8.4f} s   naive {naive_dc_s:8.3f} s   "
          f"speed-up x{naive_dc_s / ours_dc_s:,.0f}   (correct {dc.correct}, splits "
          f"{dc.splits}, merges {dc.merges}, catastrophes {dc.catastrophes})")

    if not args.skip_large:
        big = tessellation(4 * args.size, 16 * args.cells, rng)
        bigp = perturb(big, rng)
        s_f1, c = clock(lambda: match_counts(big, bigp, DEFAULT_THRESHOLDS), args.repeats)
        s_dc, _ = clock(lambda: deepcell_counts(big, bigp), args.repeats)
        print(f"{4 * args.size}x{4 * args.size}, {np.unique(big[big > 0]).size} cells: "
              f"F1 @ 10 thresholds {s_f1:.3f} s, DeepCell {s_dc:.3f} s "
              f"(F1@0.5 = {c[0].f1:.4f})")

    n_img = args.coco_images
    if n_img <= 0:
        return
    trues, preds = [], []
    for _ in range(n_img):
        ti = tessellation(args.size, args.cells, rng)
        trues.append(ti)
        preds.append(perturb(ti, rng))
    t0 = time.perf_counter()
    gt = coco_gt_from_labels(trues)
    dets = [
        detections_from_label(pi, rng.random(np.unique(pi[pi > 0]).size)) for pi in preds
    ]
    conv_s = time.perf_counter() - t0
    n_gt = len(gt["annotations"])
    n_dt = sum(len(d.rles) for d in dets)
    print(f"COCO: {n_img} images, {n_gt} GT and {n_dt} detections "
          f"(label -> RLE conversion {conv_s:.2f} s)")
    res = {}
    for iou_type in ("segm", "bbox"):
        times = {}
        for backend in ("faster", "pycocotools"):
            t0 = time.perf_counter()
            res[backend] = evaluate_coco(gt, dets, iou_types=(iou_type,), backend=backend)
            times[backend] = time.perf_counter() - t0
        diff = max(abs(res["faster"][k] - res["pycocotools"][k]) for k in res["faster"])
        print(f"COCO {iou_type:4s}  faster-coco-eval {times['faster']:7.2f} s   pycocotools "
              f"{times['pycocotools']:7.2f} s   ratio x{times['pycocotools'] / times['faster']:.1f}"
              f"   mAP {res['faster'][f'{iou_type}_mAP']:.4f}  "
              f"AP50 {res['faster'][f'{iou_type}_AP50']:.4f}  max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
