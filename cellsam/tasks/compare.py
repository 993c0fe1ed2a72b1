"""Paired comparison of two evaluations of the same images: which images got better or
worse, and is the difference more than resampling noise?

    python -m cellsam.tasks.compare <run A> <run B> [--metrics f1_50 aji] [--out DIR]

A and B are result folders (holding `results_per_image.csv`, from `eval.py` with a
checkpoint or `pred_dir=`) or such CSV files. Images are paired by (dataset, name); both
runs must hold the same images, else the ones in only one run are named and nothing is
compared. For each metric (per-image columns; all higher-is-better), over the images
where both values are defined:

- the means of A and B and the mean paired difference B - A, with a paired bootstrap
  interval (the images resampled, `cellsam.metrics.bootstrap.paired_interval`);
- how many images got better (B > A), worse and tied, and which;
- the two-sided sign test (`scipy.stats.binomtest` on better vs worse, ties left out) and
  the Wilcoxon signed-rank test (`scipy.stats.wilcoxon`, zero differences left out).

Prints a Markdown report; `--out` also writes `compare.md`, `compare.json` and
`compare_per_image.csv` (every image's A, B and B - A per metric) there.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellsam.metrics.bootstrap import paired_interval
from cellsam.metrics.names import label_of
from cellsam.utils.atomic import atomic_path, atomic_write_text

__all__ = ["DEFAULT_METRICS", "compare", "compare_metric", "main", "read_per_image"]

PER_IMAGE = "results_per_image.csv"
DEFAULT_METRICS = ("f1_50", "deepcell_f1_60", "cellpose_ap_50", "cellpose_ap_75", "aji",
                   "pq_50", "msa")
_TIE = 1e-12  # differences this small are float noise of the same counts


def read_per_image(path: str | Path) -> dict[tuple[str, str], dict[str, float]]:
    """`{(dataset, name): {column: value}}` of a result folder's (or file's) per-image CSV;
    empty cells (undefined values) become NaN."""
    path = Path(path)
    csv_path = path / PER_IMAGE if path.is_dir() else path
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: no per-image results (run eval.py to make them)")
    out: dict[tuple[str, str], dict[str, float]] = {}
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            key = (row["dataset"], row.get("name") or row["index"])
            if key in out:
                raise ValueError(f"{csv_path}: image {key[1]!r} of {key[0]!r} listed twice")
            out[key] = {k: float(v) if v not in ("", None) else math.nan
                        for k, v in row.items() if k not in ("dataset", "name", "index")}
    return out


def _p_values(d: np.ndarray) -> tuple[float, float, float]:
    """(sign test p, Wilcoxon p, Wilcoxon statistic) of paired differences; NaN where a
    test is undefined (no non-zero difference)."""
    from scipy import stats

    nz = d[np.abs(d) > _TIE]
    if nz.size == 0:
        return math.nan, math.nan, math.nan
    sign = stats.binomtest(int((nz > 0).sum()), int(nz.size), 0.5).pvalue
    w = stats.wilcoxon(nz)
    return float(sign), float(w.pvalue), float(w.statistic)


def compare_metric(keys: Sequence[tuple[str, str]], a: np.ndarray, b: np.ndarray,
                   n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                   weights: np.ndarray | None = None) -> dict[str, Any]:
    """The paired comparison of one metric: `a`, `b` `[n]` per image in the order of
    `keys` (`weights`: fixed bootstrap resamples, for tests)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    d = b[ok] - a[ok]
    used = [k for k, o in zip(keys, ok) if o]
    sign_p, wil_p, wil_stat = _p_values(d)
    lo, hi = (paired_interval(d, n_boot, seed, level, weights) if d.size
              else (math.nan, math.nan))
    better = [(used[i], float(d[i])) for i in np.argsort(-d, kind="stable") if d[i] > _TIE]
    worse = [(used[i], float(d[i])) for i in np.argsort(d, kind="stable") if d[i] < -_TIE]
    return {
        "n": int(d.size), "n_undefined": int((~ok).sum()),
        "mean_a": float(a[ok].mean()) if d.size else math.nan,
        "mean_b": float(b[ok].mean()) if d.size else math.nan,
        "mean_diff": float(d.mean()) if d.size else math.nan, "ci": [lo, hi],
        "better": len(better), "worse": len(worse), "tied": int(d.size - len(better) - len(worse)),
        "sign_test_p": sign_p, "wilcoxon_p": wil_p, "wilcoxon_statistic": wil_stat,
        "improved": [{"dataset": k[0], "name": k[1], "diff": v} for k, v in better],
        "worsened": [{"dataset": k[0], "name": k[1], "diff": v} for k, v in worse],
    }


def compare(run_a: str | Path, run_b: str | Path, metrics: Sequence[str] = DEFAULT_METRICS,
            n_boot: int = 2000, seed: int = 0, level: float = 0.95,
            dataset: str | None = None) -> dict[str, Any]:
    """Compare run B against run A on their common images (see the module docstring)."""
    a, b = read_per_image(run_a), read_per_image(run_b)
    if dataset is not None:
        a = {k: v for k, v in a.items() if k[0] == dataset}
        b = {k: v for k, v in b.items() if k[0] == dataset}
        if not a and not b:
            raise ValueError(f"no image of dataset {dataset!r} in either run")
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        def names(keys: list[tuple[str, str]]) -> str:
            shown = ", ".join(f"{d}/{n}" for d, n in keys[:20])
            return shown + (f", ... and {len(keys) - 20} more" if len(keys) > 20 else "")

        raise ValueError("the runs hold different images, nothing compared: "
                         + "; ".join(p for p in (
                             only_a and f"{len(only_a)} only in A ({run_a}): {names(only_a)}",
                             only_b and f"{len(only_b)} only in B ({run_b}): {names(only_b)}")
                                     if p))
    keys = sorted(a)
    out: dict[str, Any] = {"a": str(run_a), "b": str(run_b), "n_images": len(keys),
                           "dataset": dataset,
                           "bootstrap": {"n": n_boot, "seed": seed, "level": level},
                           "metrics": {}}
    for m in metrics:
        if keys and m not in a[keys[0]]:
            raise ValueError(f"no per-image column {m!r} (have: {', '.join(a[keys[0]])})")
        out["metrics"][m] = compare_metric(keys, np.array([a[k][m] for k in keys]),
                                           np.array([b[k][m] for k in keys]), n_boot, seed,
                                           level)
    out["per_image"] = [{"dataset": k[0], "name": k[1],
                         **{f"{m}_{s}": v for m in metrics
                            for s, v in (("a", a[k][m]), ("b", b[k][m]),
                                         ("diff", b[k][m] - a[k][m]))}} for k in keys]
    return out


def _num(v: float, fmt: str = ".3f") -> str:
    return "n/a" if v is None or math.isnan(v) else format(v, fmt)


def markdown(result: Mapping[str, Any], top: int = 10) -> str:
    """The comparison as Markdown: one row per metric, then the images that moved most."""
    b = result["bootstrap"]
    lines = [f"### Paired comparison: B = {result['b']} against A = {result['a']} "
             f"({result['n_images']} images"
             + (f" of {result['dataset']}" if result.get("dataset") else "") + ")", "",
             f"| Metric | Images | A mean | B mean | B - A mean [{100 * b['level']:g} % CI] "
             "| Better | Worse | Tied | Sign test p | Wilcoxon p |", "|" + "---|" * 10]
    for m, r in result["metrics"].items():
        lo, hi = r["ci"]
        lines.append(f"| {label_of(m)} | {r['n']} | {_num(r['mean_a'])} | {_num(r['mean_b'])} | "
                     f"{_num(r['mean_diff'], '+.4f')} [{_num(lo, '+.4f')}, {_num(hi, '+.4f')}] | "
                     f"{r['better']} | {r['worse']} | {r['tied']} | {_num(r['sign_test_p'], '.3g')}"
                     f" | {_num(r['wilcoxon_p'], '.3g')} |")
    lines += ["", f"CI: paired bootstrap over images ({b['n']} resamples, seed {b['seed']}); "
              "images where a metric is undefined in either run are left out of it."]
    for m, r in result["metrics"].items():
        for word, items in (("better", r["improved"]), ("worse", r["worsened"])):
            if items:
                shown = ", ".join(f"{i['dataset']}/{i['name']} ({i['diff']:+.3f})"
                                  for i in items[:top])
                more = f", ... and {len(items) - top} more" if len(items) > top else ""
                lines.append(f"- {label_of(m)}, {word} in B: {shown}{more}")
    return "\n".join(lines) + "\n"


def _clean(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return None if isinstance(v, float) and math.isnan(v) else v


def write(result: Mapping[str, Any], out_dir: str | Path, top: int = 10) -> dict[str, Path]:
    """compare.md, compare.json and compare_per_image.csv in `out_dir` (atomic writes)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "compare.md", "json": out / "compare.json",
             "csv": out / "compare_per_image.csv"}
    atomic_write_text(paths["md"], markdown(result, top))
    atomic_write_text(paths["json"], json.dumps(_clean(dict(result)), indent=2) + "\n")
    rows = result["per_image"]
    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["dataset", "name"])
        writer.writeheader()
        writer.writerows([{k: "" if isinstance(v, float) and math.isnan(v) else v
                           for k, v in r.items()} for r in rows])
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cellsam.tasks.compare",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("a", help="result folder (or results_per_image.csv) of run A")
    parser.add_argument("b", help="result folder (or results_per_image.csv) of run B")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS),
                        help="per-image columns to compare (default: %(default)s)")
    parser.add_argument("--dataset", default=None, help="compare only this dataset's images")
    parser.add_argument("--out", default=None, help="also write compare.{md,json,csv} here")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--top", type=int, default=10, help="images listed per direction")
    args = parser.parse_args(argv)
    try:
        result = compare(args.a, args.b, args.metrics, args.n_boot, args.seed, args.level,
                         args.dataset)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown(result, args.top), end="")
    if args.out:
        write(result, args.out, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
