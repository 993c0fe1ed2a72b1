"""Speed of the synthetic cell generator: images/s per archetype at a given size.

    python experiments/benchmarks/bench_synthetic.py                    # 50 and 1000 cells
    python experiments/benchmarks/bench_synthetic.py --cells 50 --repeats 20 --size 512

One process, one core: run with OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 for a clean
single-core number. Reports the median wall time per image over `--repeats` seeds (after
one warm-up image), images/s, CPU time per image, and the mean object count returned (it
equals the requested count when the cells fit). The issue's target: >= 20 images/s at
512x512 with ~50 cells.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from cellsam.data.synthetic import ARCHETYPES, generate_sample


def bench(archetype: str, cells: int, size: int, repeats: int) -> dict:
    generate_sample(archetype, cells, seed=10_000, size=size)  # warm-up: imports, caches
    walls, cpus, counts = [], [], []
    for seed in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        _, label = generate_sample(archetype, cells, seed=seed, size=size)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        counts.append(int(label.max()))
    wall = statistics.median(walls)
    return {"wall_ms": wall * 1e3, "img_s": 1 / wall, "cpu_ms": statistics.median(cpus) * 1e3,
            "objects": float(np.mean(counts))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, nargs="+", default=[50, 1000], help="cells per image")
    p.add_argument("--size", type=int, default=512, help="image side (default 512)")
    p.add_argument("--repeats", type=int, default=10, help="images per setting (default 10)")
    p.add_argument("--archetypes", default=",".join(ARCHETYPES), help="comma-separated")
    args = p.parse_args(argv)
    print(f"{'archetype':<10} {'cells':>6} {'ms/img':>8} {'img/s':>7} {'cpu ms':>8} {'objects':>8}")
    for cells in args.cells:
        for archetype in args.archetypes.split(","):
            r = bench(archetype, cells, args.size, args.repeats)
            print(f"{archetype:<10} {cells:>6} {r['wall_ms']:>8.1f} {r['img_s']:>7.1f} "
                  f"{r['cpu_ms']:>8.1f} {r['objects']:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
