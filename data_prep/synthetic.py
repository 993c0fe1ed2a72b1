"""Generate the synthetic cell dataset (five archetypes, exact labels) in the project format.

Source: `cellsam.data.synthetic` (no download). Licence: Apache-2.0.

    python -m data_prep.synthetic --out data                      # -> data/synthetic/
    python -m data_prep.synthetic --out data --n-train 960 --cells 50 400 --workers 8
    python -m data_prep.synthetic --out runs/bact --archetypes bacteria --cells 200 600

Like every converter, `--out` is the data root and the dataset goes to `<out>/synthetic/`.
(Training with `data=synthetic` needs no step here: it generates its own copy in the cache
folder from the settings in conf/data/synthetic.yaml. This command makes custom sets.)
Nothing is written when that folder already holds a dataset made with the same settings
(`--force` regenerates). The output bytes do not depend on `--workers`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from cellsam.data.format import MANIFEST_FILE
from cellsam.data.synthetic import ARCHETYPES, DATASET_NAME, GENERATOR_VERSION, ensure_synthetic

CONVERTER_VERSION = GENERATOR_VERSION  # recorded in the manifest as converter_version


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.synthetic",
        description="Generate synthetic microscopy images with exact instance labels.",
    )
    p.add_argument("--out", type=Path, default=Path(os.environ.get("CELLSAM_DATA", "data")),
                   help="data root; the dataset is written to <out>/synthetic/ "
                        "(default: $CELLSAM_DATA or ./data)")
    p.add_argument("--n-train", type=int, default=96, help="training images (default 96)")
    p.add_argument("--n-val", type=int, default=16, help="validation images (default 16)")
    p.add_argument("--n-test", type=int, default=16, help="test images (default 16)")
    p.add_argument("--cells", type=int, nargs=2, default=(8, 48), metavar=("MIN", "MAX"),
                   help="cells per image, drawn uniformly in [MIN, MAX] (default 8 48)")
    p.add_argument("--archetypes", default=",".join(ARCHETYPES),
                   help=f"comma-separated, cycled over images (default {','.join(ARCHETYPES)})")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel worker processes (same output bytes as with 1)")
    p.add_argument("--force", action="store_true", help="regenerate even if up to date")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the generator CLI; returns 0 on success, 2 on bad arguments."""
    args = build_parser().parse_args(argv)
    archetypes = [a.strip() for a in args.archetypes.split(",") if a.strip()]
    bad = [a for a in archetypes if a not in ARCHETYPES]
    lo, hi = args.cells
    counts = {"train": args.n_train, "val": args.n_val, "test": args.n_test}
    problems = []
    if bad or not archetypes:
        problems.append(f"unknown archetypes {bad or archetypes}; choose from {list(ARCHETYPES)}")
    if not 0 <= lo <= hi:
        problems.append(f"--cells needs 0 <= MIN <= MAX, got {lo} {hi}")
    if min(counts.values()) < 0:
        problems.append("image counts must be >= 0")
    if problems:
        for msg in problems:
            print(f"error: {msg}", file=sys.stderr)
        return 2
    out = args.out / DATASET_NAME
    if args.force:  # makes ensure_synthetic see a stale folder; it replaces it atomically
        (out / MANIFEST_FILE).unlink(missing_ok=True)
    start = time.perf_counter()
    path = ensure_synthetic(out, counts, (lo, hi), archetypes, args.seed, args.workers,
                            progress=not args.quiet)
    if not args.quiet:
        print(f"synthetic dataset at {path} ({time.perf_counter() - start:.1f} s): "
              + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" images, cells {lo}-{hi}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
