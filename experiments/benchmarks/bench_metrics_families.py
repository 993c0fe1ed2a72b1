"""Speed of the Cellpose AP / AJI, panoptic quality and mSA metrics against their
reference packages, on 1000-cell 1024x1024 label pairs.

Two inputs: a synthetic tessellation of ~1000 touching round cells (`bench_metrics.
tessellation`) and, when ../shared/data is there, DSB 2018 label images tiled into a
1024x1024 canvas until it holds ~1000 nuclei; each with a perturbed prediction
(`bench_metrics.perturb`: 1-px shift, deletions, merges, splits, false blobs, scrambled
ids). In the same process it times, best of N:

- `cellpose_ap` at 0.50..0.95 vs `cellpose.metrics.average_precision`;
- `aggregated_jaccard_index` vs `cellpose.metrics.aggregated_jaccard_index`;
- `panoptic_quality` at 0.5 vs `stardist.matching.matching` (after a warm-up call that
  compiles its numba kernel);
- `segmentation_accuracy` vs `elf.evaluation.mean_segmentation_accuracy`;

checks that both sides give the same numbers, and prints seconds and ratios. A missing
reference package is reported and skipped. Install them with `pip install -e .[refs]`.

Usage: python experiments/benchmarks/bench_metrics_families.py [--cells 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from bench_metrics import clock, perturb, tessellation  # same folder (sys.path[0])

from cellsam.metrics import (
    DEFAULT_THRESHOLDS,
    MSA_THRESHOLDS,
    aggregated_jaccard_index,
    cellpose_ap,
    compute_overlaps,
    panoptic_quality,
    segmentation_accuracy,
)

ROOT = Path(__file__).resolve().parents[2]


def tiled_real(size: int, n_cells: int) -> np.ndarray | None:
    """DSB 2018 labels pasted side by side into `[size, size]` until >= n_cells objects."""
    data = Path(os.environ.get("CELLSAM_SHARED_DATA", ROOT.parent / "shared" / "data"))
    files = sorted((data / "dsb2018_fixed" / "labels").glob("*.tif"))
    if not files:
        return None
    import tifffile

    labs = []
    for f in files:
        lab = np.asarray(tifffile.imread(f)).astype(np.int64)
        ids = np.unique(lab[lab > 0])
        if ids.size >= 20 and max(lab.shape) <= size // 2:
            labs.append((ids.size / lab.size, lab, ids))
    labs.sort(key=lambda e: -e[0])  # densest first, packed row by row
    canvas = np.zeros((size, size), np.int64)
    y = x = row_h = n = 0
    for _, lab, ids in labs:
        h, w = lab.shape
        if x + w > size:
            y, x, row_h = y + row_h, 0, 0
        if y + h > size or n >= n_cells:
            break
        lut = np.zeros(lab.max() + 1, np.int64)
        lut[ids] = np.arange(n + 1, n + 1 + ids.size)
        canvas[y : y + h, x : x + w] = lut[lab]
        n += ids.size
        x, row_h = x + w, max(row_h, h)
    return canvas


def line(name: str, ours_s: float, ref_s: float | None, note: str) -> None:
    if ref_s is None:
        print(f"  {name:<22} ours {ours_s:8.4f} s   reference not installed")
        return
    print(f"  {name:<22} ours {ours_s:8.4f} s   ref {ref_s:8.4f} s   "
          f"ref/ours x{ref_s / ours_s:7.1f}   {note}")


def bench(t: np.ndarray, p: np.ndarray, repeats: int) -> None:
    n_t, n_p = np.unique(t[t > 0]).size, np.unique(p[p > 0]).size
    print(f"{t.shape[0]}x{t.shape[1]}: {n_t} true, {n_p} predicted objects")
    thr = list(DEFAULT_THRESHOLDS)
    try:
        import cellpose.metrics as cpm
    except ImportError:
        cpm = None
    try:
        import stardist.matching as sdm
    except ImportError:
        sdm = None
    try:
        from elf.evaluation import mean_segmentation_accuracy as elf_msa
    except ImportError:
        elf_msa = None

    s, ours = clock(lambda: cellpose_ap(t, p, thr), repeats)
    r_s = None
    if cpm is not None:
        r_s, ref = clock(lambda: cpm.average_precision(t, p, thr), repeats)
        assert np.array_equal(ours.tp, ref[1]) and np.array_equal(ours.ap.astype(np.float32),
                                                                  ref[0])
    line("Cellpose AP x10 thr", s, r_s, f"AP@0.5 = {ours.ap[0]:.4f}")

    s, ours = clock(lambda: aggregated_jaccard_index(t, p), repeats)
    r_s = None
    if cpm is not None:
        r_s, ref = clock(lambda: cpm.aggregated_jaccard_index([t], [p])[0], repeats)
        assert abs(ours - ref) <= 1e-12, (ours, ref)
    line("AJI (Cellpose)", s, r_s, f"AJI = {ours:.4f}")

    s, ours = clock(lambda: panoptic_quality(t, p), repeats)
    r_s = None
    if sdm is not None:
        sdm.matching(t[:64, :64], p[:64, :64])  # numba compile, not timed
        r_s, ref = clock(lambda: sdm.matching(t, p, thresh=0.5), repeats)
        assert (ours.tp, ours.fp, ours.fn) == (ref.tp, ref.fp, ref.fn)
        assert abs(ours.pq - ref.panoptic_quality) <= 1e-6
    line("PQ @0.5 (StarDist)", s, r_s, f"PQ = {ours.pq:.4f}")

    s, ours = clock(lambda: segmentation_accuracy(t, p), repeats)
    r_s = None
    if elf_msa is not None:
        r_s, ref = clock(lambda: elf_msa(p, t), repeats)
        assert abs(ours.msa - ref) <= 1e-12, (ours.msa, ref)
    line("mSA x10 thr (elf)", s, r_s, f"mSA = {ours.msa:.4f}")

    def all_four():
        ov = compute_overlaps(t, p)
        return (
            cellpose_ap(t, p, thr, overlaps=ov),
            aggregated_jaccard_index(t, p, ov),
            panoptic_quality(t, p, overlaps=ov),
            segmentation_accuracy(t, p, MSA_THRESHOLDS, ov),
        )

    s, _ = clock(all_four, repeats)
    print(f"  {'all four, one overlap':<22} ours {s:8.4f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3, help="best of N, both sides")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    print("synthetic tessellation")
    t = tessellation(args.size, args.cells, rng)
    bench(t, perturb(t, rng), args.repeats)
    real = tiled_real(args.size, args.cells)
    if real is None:
        print("real tiles: ../shared/data/dsb2018_fixed not found, skipped")
    else:
        print("real DSB 2018 tiles")
        bench(real, perturb(real, rng), args.repeats)


if __name__ == "__main__":
    main()
