"""Bootstrap confidence intervals over images (percentile method, seeded numpy).

Every headline metric of the tables is a ratio of per-image sums, `sum(num) / sum(den)`:
a per-image mean is `num = value, den = 1`; a mean over the images where the value is
defined (Cellpose's AP and AJI) is `num = value or 0, den = defined`; a pooled F1 is
`num = 2 TP, den = n_true + n_pred` (TP / (TP + (FP + FN) / 2) rewritten). A bootstrap
resample draws the images with replacement, which is the same as giving image i the weight
`w_i` ~ Multinomial(n, 1/n); the statistic of resample b is then
`(W @ num)[b] / (W @ den)[b]`, one matrix product for every metric at once. The interval is
the (1 - level)/2 and (1 + level)/2 percentiles (numpy's linear interpolation) of those
statistics; resamples where a statistic is undefined (0 / 0) are left out.

A paired comparison of two runs on the same images is the same computation on the
per-image differences (`paired_interval`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["HEADLINE", "bootstrap_settings", "headline_intervals", "paired_interval",
           "ratio_intervals", "resample_weights"]

_CHUNK = 256  # resamples per matrix product: bounds memory at many images


def bootstrap_settings(block: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`{n, seed, level}` from a config block (`conf/eval.yaml` `bootstrap`), defaults
    filled: 2000 resamples, seed 0, 95 %."""
    b = dict(block or {})
    return {"n": int(b.get("n", 2000)), "seed": int(b.get("seed", 0)),
            "level": float(b.get("level", 0.95))}


def _weight_chunks(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, _CHUNK):
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=min(_CHUNK, n_boot - start))


def resample_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """`[n_boot, n]` counts of each image in each resample (rows sum to n), seeded: the
    resamples `ratio_intervals` draws with the same arguments."""
    return np.concatenate(list(_weight_chunks(n, n_boot, seed)), 0)


def _percentiles(stats: np.ndarray, level: float) -> tuple[float, float]:
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(stats, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def ratio_intervals(
    columns: Mapping[str, tuple[np.ndarray, np.ndarray]],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    weights: np.ndarray | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of `sum(num) / sum(den)` over image resamples.

    Args:
        columns: metric -> (`num [n]`, `den [n]`) per image, all of the same n images.
        n_boot, seed: number of resamples and the generator's seed (ignored with `weights`).
        level: coverage of the interval (0.95: the 2.5 and 97.5 percentiles).
        weights: `[B, n]` resample counts to use instead of random ones (tests).

    Returns:
        metric -> (low, high); (NaN, NaN) with no image or no defined resample.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    names = list(columns)
    n = len(next(iter(columns.values()))[0]) if names else 0
    if n == 0:
        return {k: (math.nan, math.nan) for k in names}
    num = np.stack([np.asarray(columns[k][0], np.float64) for k in names], 1)  # [n, k]
    den = np.stack([np.asarray(columns[k][1], np.float64) for k in names], 1)
    chunks = _weight_chunks(n, n_boot, seed) if weights is None else [np.asarray(weights)]
    stats = []
    for w in chunks:
        w = w.astype(np.float64)
        top, bottom = w @ num, w @ den  # [B, k]
        with np.errstate(divide="ignore", invalid="ignore"):
            stats.append(np.where(bottom > 0, top / bottom, np.nan))
    all_stats = np.concatenate(stats, 0)
    return {k: _percentiles(all_stats[:, i], level) for i, k in enumerate(names)}


def _defined(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(values)
    return np.where(ok, values, 0.0), ok.astype(np.float64)


def _col(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows], np.float64)


#: Headline metric -> (num, den) per image from `per_image.image_metrics` rows; each ratio
#: of sums equals the metric's value in `summarize` (tests check it).
HEADLINE: dict[str, Any] = {
    "f1_50_mean": lambda rows: (_col(rows, "f1_50"), np.ones(len(rows))),
    "f1_50_pooled": lambda rows: (2 * _col(rows, "tp_50"),
                                  _col(rows, "n_true") + _col(rows, "n_pred")),
    # DeepCell F1 = 2 P R / (P + R) = 2 correct / (n_true + n_pred) when P, R > 0 (and 0 = 0
    # otherwise), so the pooled value is a ratio of sums too.
    "deepcell_f1_60": lambda rows: (2 * _col(rows, "deepcell_correct"),
                                    _col(rows, "n_true") + _col(rows, "n_pred")),
    "cellpose_ap_50": lambda rows: _defined(_col(rows, "cellpose_ap_50")),
    "cellpose_ap_75": lambda rows: _defined(_col(rows, "cellpose_ap_75")),
    "aji": lambda rows: _defined(_col(rows, "aji")),
    "pq_50": lambda rows: (_col(rows, "pq_50"), np.ones(len(rows))),
    "msa": lambda rows: (_col(rows, "msa"), np.ones(len(rows))),
}


def headline_intervals(rows: Sequence[Mapping[str, Any]], n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Intervals of the `HEADLINE` metrics over the images of `rows`, all from the same
    resamples."""
    return ratio_intervals({k: f(rows) for k, f in HEADLINE.items()}, n_boot, seed, level)


def paired_interval(diffs: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                    weights: np.ndarray | None = None) -> tuple[float, float]:
    """Interval of the mean of per-image differences (the same images resampled in both
    runs, i.e. the differences resampled)."""
    d = np.asarray(diffs, np.float64)
    return ratio_intervals({"d": (d, np.ones(d.size))}, n_boot, seed, level, weights)["d"]
