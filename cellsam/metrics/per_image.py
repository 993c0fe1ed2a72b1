"""Per-image metrics of every family, from the counts in `report.image_record` records.

A record holds the counts of one image (TP at each IoU threshold 0.50..0.95, TP at elf's
`np.arange(0.5, 1.0, 0.05)`, the DeepCell counts, Cellpose's AJI, the IoU sum of the TP
pairs at 0.5, the foreground pixel counts); here they become numbers through the metric
modules' own dataclasses, so each definition exists once:

- `image_metrics(record)`: one row of `results_per_image.csv`;
- `family_summary(records)`: the dataset-level Cellpose AP, AJI, PQ / DQ / SQ, mSA and
  foreground Dice keys;
- `iou_curve(records)`: per-image mean F1 (CellSAM) and Cellpose AP at each IoU threshold.

Averages use `math.fsum` (exactly rounded), so a summary cannot depend on record order
(records gathered from DDP ranks come in any order).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellsam.utils.atomic import atomic_path

from .cellpose_ap import CellposeAP
from .deepcell import DeepCellCounts
from .dice import ForegroundOverlap
from .f1 import DEFAULT_THRESHOLDS, MatchCounts
from .panoptic import PanopticQuality
from .segmentation_accuracy import MSA_THRESHOLDS, SegmentationAccuracy

__all__ = ["PER_IMAGE_FIELDS", "family_summary", "image_metrics", "iou_curve",
           "write_per_image_csv"]

_TAGS = tuple(f"{round(100 * t):02d}" for t in DEFAULT_THRESHOLDS)  # "50", "55", ..., "95"

#: Columns of results_per_image.csv, in order.
PER_IMAGE_FIELDS: tuple[str, ...] = (
    "dataset", "index", "name", "n_true", "n_pred", "tp_50",
    *(f"f1_{t}" for t in _TAGS), "precision_50", "recall_50",
    "deepcell_f1_60", "deepcell_precision_60", "deepcell_recall_60", "deepcell_correct",
    "splits", "merges", "catastrophes",
    *(f"cellpose_ap_{t}" for t in _TAGS), "aji", "pq_50", "dq_50", "sq_50",
    "msa", "sa50", "sa75", "dice",
)


def image_metrics(rec: Mapping[str, Any]) -> dict[str, Any]:
    """Every per-image metric of one record (conventions of each reference: CellSAM's F1,
    micro-sam's SA and StarDist's PQ are 0 where undefined, Cellpose's AP and AJI NaN)."""
    n_true, n_pred = int(rec["n_true"]), int(rec["n_pred"])
    tp = np.asarray(rec["tp_iou"], np.int64)
    row: dict[str, Any] = {"dataset": rec["dataset"], "index": int(rec["index"]),
                           "name": rec.get("name") or str(rec["index"]),
                           "n_true": n_true, "n_pred": n_pred, "tp_50": int(tp[0])}
    for tag, t, k in zip(_TAGS, DEFAULT_THRESHOLDS, tp):
        row[f"f1_{tag}"] = MatchCounts(t, n_true, n_pred, int(k)).f1
    at50 = MatchCounts(0.5, n_true, n_pred, int(tp[0]))
    row.update(precision_50=at50.precision, recall_50=at50.recall)
    dc = DeepCellCounts.from_vector(rec["deepcell"])
    row.update(deepcell_f1_60=dc.f1, deepcell_precision_60=dc.precision,
               deepcell_recall_60=dc.recall, deepcell_correct=dc.correct, splits=dc.splits,
               merges=dc.merges, catastrophes=dc.catastrophes)
    ap = CellposeAP(np.asarray(DEFAULT_THRESHOLDS), n_true, n_pred, tp).ap
    row.update({f"cellpose_ap_{tag}": float(v) for tag, v in zip(_TAGS, ap)})
    row["aji"] = float(rec["aji"])
    pq = PanopticQuality(0.5, n_true, n_pred, int(tp[0]), float(rec["iou_sum_50"]))
    row.update(pq_50=pq.pq, dq_50=pq.dq, sq_50=pq.sq)
    sa = SegmentationAccuracy(MSA_THRESHOLDS, n_true, n_pred,
                              np.asarray(rec["sa_tp"], np.int64))
    row.update(msa=sa.msa, sa50=sa.sa50, sa75=sa.sa75)
    row["dice"] = ForegroundOverlap(int(rec["fg_inter"]), int(rec["fg_total"])).dice
    return row


def _mean(values: Iterable[float]) -> float:
    """Exactly rounded mean (0 with no value)."""
    vals = list(values)
    return math.fsum(vals) / len(vals) if vals else 0.0


def _nanmean(values: Iterable[float]) -> float:
    """Mean of the defined values; NaN when none is (Cellpose's undefined AP / AJI)."""
    vals = [v for v in values if not math.isnan(v)]
    return math.fsum(vals) / len(vals) if vals else math.nan


def family_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Dataset-level keys of the other families over the records of one group of images
    (`names.METRIC_DEFINITIONS` says how each one averages)."""
    rows = [image_metrics(r) for r in records]
    pooled = PanopticQuality(0.5, sum(r["n_true"] for r in rows),
                             sum(r["n_pred"] for r in rows), sum(r["tp_50"] for r in rows),
                             math.fsum(float(r["iou_sum_50"]) for r in records))
    out = {key: _nanmean(r[f"cellpose_ap_{tag}"] for r in rows)
           for key, tag in (("cellpose_ap_50", "50"), ("cellpose_ap_75", "75"),
                            ("cellpose_ap_90", "90"))}
    out["aji"] = _nanmean(r["aji"] for r in rows)
    for key in ("pq_50", "dq_50", "sq_50", "msa", "sa50", "sa75", "dice"):
        out[key] = _mean(r[key] for r in rows) if rows else math.nan
    out["pq_50_pooled"] = pooled.pq if rows else math.nan
    return out


def iou_curve(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """`{"iou": [0.5, ..., 0.95], "f1_mean": [...], "cellpose_ap": [...]}`: per-image mean
    F1 (CellSAM convention) and Cellpose AP (mean where defined) at each threshold."""
    return {"iou": list(DEFAULT_THRESHOLDS),
            "f1_mean": [_mean(r[f"f1_{t}"] for r in rows) for t in _TAGS],
            "cellpose_ap": [_nanmean(r[f"cellpose_ap_{t}"] for r in rows) for t in _TAGS]}


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)  # repr: round-trips exactly
    return value


def write_per_image_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """results_per_image.csv: `PER_IMAGE_FIELDS`, one row per image; undefined -> empty."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(PER_IMAGE_FIELDS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: _cell(v) for k, v in r.items()} for r in rows])
    return path
