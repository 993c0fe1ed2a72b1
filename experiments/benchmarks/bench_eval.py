"""Cost of the evaluation bookkeeping on dense images (what the metrics callback adds).

For N dense 512x512 label images (about `--cells` touching cells each, the tessellation
and perturbation of bench_metrics.py) this times, per image:
1. `image_record` without COCO (F1 at 0.5:0.95, DeepCell, Cellpose AP/AJI, PQ, mSA counts)
   and with COCO (plus RLEs);
2. the pickled size of a record, i.e. what each image adds to DDP's one all-gather;
3. `summarize` of the N records (COCO mask + box evaluation included).

Usage: python experiments/benchmarks/bench_eval.py [--images 20] [--cells 1000]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_metrics import perturb, tessellation  # noqa: E402

from cellsam.metrics.report import image_record, summarize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--cells", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(args.images):
        lab = tessellation(512, args.cells, rng)
        pairs.append((lab, perturb(lab, rng)))
    n_cells = np.mean([len(np.unique(t)) - 1 for t, _ in pairs])

    timings = {}
    records = {}
    for coco in (False, True):
        start = time.perf_counter()
        records[coco] = [image_record("bench", i, t, p, rng.random(len(np.unique(p)) - 1), coco)
                         for i, (t, p) in enumerate(pairs)]
        timings[coco] = (time.perf_counter() - start) / len(pairs)
    size = {c: np.mean([len(pickle.dumps(r)) for r in records[c]]) for c in records}
    start = time.perf_counter()
    out = summarize(records[True])
    t_sum = time.perf_counter() - start

    print(f"{args.images} images of 512x512, {n_cells:.0f} true cells each on average")
    print(f"image_record, no COCO:        {1e3 * timings[False]:8.1f} ms/image, "
          f"{size[False] / 1e3:8.1f} kB pickled")
    print(f"image_record, + COCO RLEs:    {1e3 * timings[True]:8.1f} ms/image, "
          f"{size[True] / 1e3:8.1f} kB pickled")
    print(f"summarize (with COCO):        {1e3 * t_sum / args.images:8.1f} ms/image")
    print(f"COCO records / plain records: {timings[True] / timings[False]:.2f}x time, "
          f"{size[True] / size[False]:.0f}x size")
    print(f"check: f1_50_mean={out['all']['f1_50_mean']:.3f} coco_map={out['all']['coco_map']:.3f}")


if __name__ == "__main__":
    main()
