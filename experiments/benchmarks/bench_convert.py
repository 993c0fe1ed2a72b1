"""Conversion speed of the data preparation pipeline (images per second).

Converts `dsb2018_fixed` (664 DSB 2018 images, `images/<id>.png` + `labels/<id>.tif`) with
the generic pairs converter, with and without CLAHE, and prints images/s and tiles/s:

    python experiments/benchmarks/bench_convert.py                  # all 664 images, 1 worker
    python experiments/benchmarks/bench_convert.py --limit 100 --workers 1 2

The source defaults to ../shared/data/dsb2018_fixed (or $CELLSAM_SHARED_DATA). Output goes
to a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from data_prep import pairs

ROOT = Path(__file__).resolve().parents[2]


def default_src() -> Path:
    shared = Path(os.environ.get("CELLSAM_SHARED_DATA", ROOT.parent / "shared" / "data"))
    return shared / "dsb2018_fixed"


def subset(src: Path, limit: int | None, work: Path) -> Path:
    """`src` itself, or a folder of symlinks to its first `limit` image/label pairs."""
    if not limit:
        return src
    dst = work / "subset"
    for sub in ("images", "labels"):
        (dst / sub).mkdir(parents=True)
    for img in sorted((src / "images").iterdir())[:limit]:
        (dst / "images" / img.name).symlink_to(img)
        lab = next((src / "labels").glob(img.stem + ".*"))
        (dst / "labels" / lab.name).symlink_to(lab)
    return dst


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(src: Path, out: Path, clahe: bool, workers: int) -> tuple[float, float, dict]:
    argv = ["--src", str(src), "--out", str(out), "--name", "bench", "--channels", "nuclear=all",
            "--workers", str(workers), "--quiet"] + ([] if clahe else ["--no-clahe"])
    start, cpu = time.perf_counter(), cpu_seconds()
    if pairs.main(argv) != 0:
        raise SystemExit("conversion failed")
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return seconds, cpu, json.loads((out / "bench" / "manifest.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=default_src())
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--workers", type=int, nargs="+", default=[1])
    args = p.parse_args()
    if not (args.src / "images").is_dir():
        raise SystemExit(f"{args.src}: not found (set CELLSAM_SHARED_DATA or --src)")
    with tempfile.TemporaryDirectory(prefix="bench_convert_") as tmp:
        src = subset(args.src, args.limit, Path(tmp))
        print(f"source: {args.src} ({args.limit or 'all'} images), {os.cpu_count()} CPUs")
        print(f"load average before: {os.getloadavg()[0]:.1f} (CPU-s: CPU seconds of all "
              "processes, a measure that other load on the machine barely changes)")
        print(f"{'clahe':>6} {'workers':>7} {'images':>7} {'tiles':>6} {'seconds':>8} "
              f"{'images/s':>9} {'tiles/s':>8} {'CPU-s':>7} {'images/CPU-s':>13}")
        for clahe in (False, True):
            for workers in args.workers:
                out = Path(tmp) / "out"
                seconds, cpu, m = run(src, out, clahe, workers)
                n = m["filtering"]["source_images"]
                tiles = m["filtering"]["tiles_written"]
                print(f"{str(clahe):>6} {workers:>7} {n:>7} {tiles:>6} {seconds:>8.1f} "
                      f"{n / seconds:>9.2f} {tiles / seconds:>8.2f} {cpu:>7.1f} {n / cpu:>13.2f}",
                      flush=True)
                shutil.rmtree(out)


if __name__ == "__main__":
    main()
