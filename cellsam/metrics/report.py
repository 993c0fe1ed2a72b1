"""Evaluation summaries in the `results.json` schema, the paper's numbers, and the writers.

Shared by the metrics callback (`cellsam.callbacks.segmentation_metrics`) and `eval.py`:

1. `image_record(...)` turns one (true, predicted) label-image pair into a small picklable
   dict of counts (TP at IoU 0.50..0.95 and at elf's thresholds, DeepCell counts, AJI, the
   TP IoU sum) and, for COCO, compact RLEs. Records are what DDP ranks gather
   (`cellsam.utils.distributed.gather_records`), so every rank can compute exactly the
   numbers of a single-process run.
2. `summarize(records)` -> `{dataset: {SCHEMA_KEYS...}, ..., "all": {...}}` (flat numbers:
   the metrics callback logs every key).
3. `add_intervals(results, records)` adds per dataset the bootstrap intervals (`ci`) of the
   headline metrics and the IoU-threshold curves (`iou_curve`).
4. `write_results(...)` writes `results.json`, `results.csv`, `results.md`, `results.png`
   and, given the records, `results_per_image.csv` and `results_iou.png`.

Metric names and definitions are in `names.py`; per-image values in `per_image.py`; the
F1 conventions (undefined per-image F1 counts as 0) are those of `cellsam.metrics.f1`.
The file writers live here so that every caller produces identical files.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellsam.utils.atomic import atomic_path, atomic_write_text

from . import per_image
from .bootstrap import headline_intervals
from .cellpose_ap import aggregated_jaccard_index
from .coco import ImageDetections, detections_from_label, evaluate_coco, label_to_rles
from .deepcell import DeepCellCounts, deepcell_counts
from .dice import foreground_overlap
from .f1 import DEFAULT_THRESHOLDS, MatchCounts, match_counts
from .matching import compute_overlaps
from .names import COLUMNS, FAMILY_COLUMNS, INTERVAL_KEYS, METRIC_DEFINITIONS
from .panoptic import panoptic_quality
from .paper import PAPER_F1, paper_dataset, paper_f1
from .plots import bar_chart as _bar_chart
from .plots import iou_curve_chart
from .segmentation_accuracy import MSA_THRESHOLDS

__all__ = [
    "COLUMNS",
    "FAMILY_COLUMNS",
    "METRIC_DEFINITIONS",
    "PAPER_F1",
    "SCHEMA_KEYS",
    "add_intervals",
    "image_record",
    "markdown_table",
    "paper_dataset",
    "paper_f1",
    "results_title",
    "summarize",
    "write_results",
]

#: Keys of every dataset entry of results.json (then two extras, see METRIC_DEFINITIONS).
SCHEMA_KEYS: tuple[str, ...] = (
    "n_images", "n_cells", "f1_50_mean", "f1_50_pooled", "precision_50", "recall_50",
    "deepcell_f1_60", "deepcell_precision_60", "deepcell_recall_60", "splits", "merges",
    "coco_map", "coco_ap50", "coco_box_map", "coco_box_ap50",
    "cellpose_ap_50", "cellpose_ap_75", "cellpose_ap_90", "aji", "pq_50", "dq_50", "sq_50",
    "pq_50_pooled", "msa", "sa50", "sa75", "dice",
)
EXTRA_KEYS: tuple[str, ...] = ("n_pred_cells", "catastrophes")

# -- per-image records --------------------------------------------------------------------------
def image_record(
    dataset: str,
    index: int,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    scores: Sequence[float] | np.ndarray | None = None,
    with_coco: bool = True,
    name: str | None = None,
) -> dict[str, Any]:
    """Everything the summaries need from one image, as plain numbers and RLEs.

    Args:
        dataset, index: the image's identity (the DDP de-duplication key).
        name: the image's name in results_per_image.csv (default: its index).
        y_true: true label image `[H, W]` (0 = background).
        y_pred: predicted label image `[H, W]`.
        scores: `[N]` score per predicted object in increasing id order (COCO ranking);
            all 1 when None.
        with_coco: also store RLEs for COCO (skip on epochs without COCO: it is the
            bulkiest part of a record).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    ov = compute_overlaps(y_true, y_pred)  # one pixel pass shared by every metric
    counts = match_counts(y_true, y_pred, DEFAULT_THRESHOLDS, overlaps=ov)
    mc = counts[0]  # IoU 0.5
    dc = deepcell_counts(y_true, y_pred, overlaps=ov)
    fg = foreground_overlap(y_true, y_pred, overlaps=ov)
    rec: dict[str, Any] = {
        "dataset": str(dataset), "index": int(index), "n_true": mc.n_true,
        "n_pred": mc.n_pred, "tp_50": mc.tp, "f1_50": mc.f1, "deepcell": dc.to_vector(),
        "tp_iou": [c.tp for c in counts],
        # elf's np.arange thresholds differ from 0.55.. in the last bits (see
        # segmentation_accuracy), so micro-sam's SA needs its own counts
        "sa_tp": [c.tp for c in match_counts(y_true, y_pred, MSA_THRESHOLDS, overlaps=ov)],
        "aji": aggregated_jaccard_index(y_true, y_pred, overlaps=ov),
        "iou_sum_50": panoptic_quality(y_true, y_pred, 0.5, overlaps=ov).sum_iou,
        "fg_inter": fg.inter, "fg_total": fg.total,
    }
    if name is not None:
        rec["name"] = str(name)
    if with_coco:
        gt_rles, _, gt_boxes, gt_areas = label_to_rles(y_true)
        sc = np.ones(ov.n_pred) if scores is None else np.asarray(scores, np.float64)
        det = detections_from_label(y_pred, sc)
        rec["coco"] = {
            "size": [int(s) for s in y_true.shape], "gt_rles": gt_rles,
            "gt_boxes": gt_boxes, "gt_areas": gt_areas, "det_rles": det.rles,
            "det_scores": det.scores, "det_boxes": det.boxes_xyxy,
        }
    return rec


def _coco_metrics(records: Sequence[Mapping[str, Any]], max_dets: int) -> dict[str, float]:
    """COCO mask and box numbers over records that all carry `coco` RLEs."""
    images, anns, dets = [], [], {}
    for i, r in enumerate(records, start=1):
        c = r["coco"]
        images.append({"id": i, "height": c["size"][0], "width": c["size"][1]})
        for rle, box, area in zip(c["gt_rles"], c["gt_boxes"], c["gt_areas"]):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1,
                         "segmentation": dict(rle), "area": float(area),
                         "bbox": [float(v) for v in box], "iscrowd": 0})
        dets[i] = ImageDetections([dict(x) for x in c["det_rles"]], c["det_scores"],
                                  c["det_boxes"])
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}
    res = evaluate_coco(gt, dets, max_dets=max_dets)
    return {"coco_map": res["segm_mAP"], "coco_ap50": res["segm_AP50"],
            "coco_box_map": res["bbox_mAP"], "coco_box_ap50": res["bbox_AP50"]}


def _summary(records: Sequence[Mapping[str, Any]], coco: bool, max_dets: int) -> dict[str, Any]:
    n = len(records)
    pooled = MatchCounts(0.5, sum(r["n_true"] for r in records),
                         sum(r["n_pred"] for r in records), sum(r["tp_50"] for r in records))
    dc_vec = np.sum([r["deepcell"] for r in records], axis=0) if n else np.zeros(12)
    dc = DeepCellCounts.from_vector(dc_vec)
    out: dict[str, Any] = {
        "n_images": n, "n_cells": pooled.n_true,
        # fsum is exactly rounded, so the mean cannot depend on the order of the records
        "f1_50_mean": math.fsum(r["f1_50"] for r in records) / n if n else 0.0,
        "f1_50_pooled": pooled.f1, "precision_50": pooled.precision,
        "recall_50": pooled.recall, "deepcell_f1_60": dc.f1,
        "deepcell_precision_60": dc.precision, "deepcell_recall_60": dc.recall,
        "splits": dc.splits, "merges": dc.merges,
        "coco_map": math.nan, "coco_ap50": math.nan, "coco_box_map": math.nan,
        "coco_box_ap50": math.nan,
        "n_pred_cells": pooled.n_pred, "catastrophes": dc.catastrophes,
    }
    out.update(per_image.family_summary(records))
    if coco and n and all("coco" in r for r in records):
        out.update(_coco_metrics(records, max_dets))
    return out


def summarize(
    records: Sequence[Mapping[str, Any]],
    coco: bool = True,
    order: Sequence[str] | None = None,
    max_dets: int = 10000,
) -> dict[str, dict[str, Any]]:
    """Per-dataset and union (`"all"`) summaries of per-image records.

    Args:
        records: `image_record` outputs, each image once (see `gather_records`).
        coco: compute the COCO keys (NaN otherwise, and where records lack RLEs).
        order: dataset order of the output (others follow alphabetically).

    Returns:
        `{dataset: {SCHEMA_KEYS + EXTRA_KEYS}, ..., "all": {...}}`.
    """
    groups = _groups(records, order)
    names = [n for n in groups if n != "all"]
    out = {name: _summary(groups[name], coco, max_dets) for name in names}
    # One dataset: the union is the same set (and COCO is the slow part), so reuse it.
    out["all"] = dict(out[names[0]]) if len(names) == 1 else _summary(groups["all"], coco,
                                                                        max_dets)
    return out


def _groups(records: Sequence[Mapping[str, Any]], order: Sequence[str] | None = None
            ) -> dict[str, list[Mapping[str, Any]]]:
    """Records per dataset (`order` first, the others alphabetically), then `all`."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["dataset"], []).append(r)
    names = [n for n in (order or []) if n in groups]
    names += sorted(set(groups) - set(names))
    return {**{n: groups[n] for n in names}, "all": list(records)}


def add_intervals(
    results: Mapping[str, Mapping[str, Any]],
    records: Sequence[Mapping[str, Any]],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """`results` with, per dataset and `all`, `ci`: {headline metric: [low, high]} (the
    percentile bootstrap over that group's images, `bootstrap.headline_intervals`; left
    out with `n_boot=0`) and `iou_curve` (`per_image.iou_curve`)."""
    groups = _groups(records)
    out: dict[str, dict[str, Any]] = {}
    for name, metrics in results.items():
        rows = [per_image.image_metrics(r) for r in groups.get(name, [])]
        entry = {**metrics, "iou_curve": per_image.iou_curve(rows)}
        if n_boot > 0:
            entry["ci"] = {k: list(v) for k, v in
                           headline_intervals(rows, n_boot, seed, level).items()}
        out[name] = entry
    return out


# -- files --------------------------------------------------------------------------------------
def _clean(value: Any) -> Any:
    """JSON-safe: NaN -> None, numpy scalars -> Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _fmt(value: Any, interval: Sequence[float | None] | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = f"{float(value):.3f}"
    if interval is not None and all(v is not None and not math.isnan(v) for v in interval):
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text


def _table(rows: Sequence[Mapping[str, Any]], cols: Sequence[tuple[str, str]],
           names: Sequence[str]) -> list[str]:
    """Markdown lines of one table; a metric with a `ci` entry shows `value [low, high]`."""
    lines = ["| " + " | ".join(["Dataset", *(h for _, h in cols)]) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for row, name in zip(rows, names):
        ci = row.get("ci") or {}
        lines.append("| " + " | ".join([name] + [_fmt(row.get(k), ci.get(k)) for k, _ in cols])
                     + " |")
    return lines


def _rows(results: Mapping[str, Mapping[str, Any]], variant: str, compare: bool
          ) -> list[dict[str, Any]]:
    """One flat row per dataset (then `all`), with the paper's numbers added."""
    rows = []
    for name, metrics in results.items():
        row: dict[str, Any] = {"dataset": name, **metrics}
        sam, cp, used = paper_f1(name, variant) if compare and name != "all" else (None, None, "")
        row.update(paper_dataset=paper_dataset(name) if compare else None,
                   paper_variant=used if sam is not None else None,
                   paper_cellsam_f1_50_mean=sam, paper_cellpose_f1_50_mean=cp)
        rows.append(row)
    return rows


def markdown_table(
    results: Mapping[str, Mapping[str, Any]],
    variant: str = "generalist",
    compare: bool = True,
    title: str | None = None,
    bootstrap: Mapping[str, Any] | None = None,
) -> str:
    """Markdown tables: the paper's metrics (one row per dataset, `all` last when there are
    several, the paper's per-image mean F1@0.5 beside ours), then the other tools' metric
    families; `value [low, high]` where `results` carry bootstrap intervals (`bootstrap`:
    their settings, for the note)."""
    rows = _rows(results, variant, compare)
    if len(rows) == 2:  # one dataset: its "all" row repeats it
        rows = rows[:1]
    names = [r["dataset"] + (f" ({r['paper_variant']})" if compare and r.get("paper_variant")
                             not in (None, variant) else "") for r in rows]
    cols = [(k, h.format(variant=variant)) for k, h in COLUMNS
            if compare or not k.startswith("paper_")]
    lines = [f"### {title}", ""] if title else []
    lines += _table(rows, cols, names)
    if any(k in r for r in rows for k, _ in FAMILY_COLUMNS):
        lines += ["", "Other metric families (definitions: README, Metrics):", ""]
        lines += _table(rows, FAMILY_COLUMNS, names)
    if compare:
        lines += ["", f"Paper columns: per-image mean F1 at IoU 0.5 of the {variant} models from "
                  "the authors' released evaluation results (LIVECell: zero-shot); n/a where "
                  "the paper has no such dataset. Our F1@0.5 column uses the same definition."]
    if any(r.get("ci") for r in rows):
        b = dict(bootstrap or {})
        lines += ["", f"[low, high]: {100 * float(b.get('level', 0.95)):g} % bootstrap interval "
                  f"over images (percentile method, {b.get('n', '?')} resamples, seed "
                  f"{b.get('seed', '?')})."]
    return "\n".join(lines) + "\n"


def results_title(meta: dict[str, Any] | None) -> str | None:
    """Table title from run metadata: checkpoint, split, preset and any changed settings."""
    if not meta:
        return None
    title = " ".join(f"{k}={meta[k]}" for k in ("checkpoint", "predictions", "ground_truth",
                                                "split", "inference_preset") if k in meta)
    changes = meta.get("inference_changes")
    if changes:
        title += " (changed: " + ", ".join(f"{k}={v}" for k, v in changes.items()) + ")"
    missing = meta.get("missing_split")
    if missing:
        title += f"; no {meta.get('split')} split, not scored: " + ", ".join(missing)
    return title


def write_results(
    output_dir: str | Path,
    results: Mapping[str, Mapping[str, Any]],
    meta: Mapping[str, Any] | None = None,
    variant: str = "generalist",
    compare: bool = True,
    records: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write `results.{json,csv,md,png}` into `output_dir`, and with `records` also
    `results_per_image.csv` (`per_image.PER_IMAGE_FIELDS`, one row per record) and
    `results_iou.png`; returns their paths (keys json, csv, md, png, per_image, iou).

    results.json: `{<dataset>: {SCHEMA_KEYS..., ci, iou_curve}, ..., "all": {...},
    "meta": {...}}` with NaN written as null; `meta` also holds the paper's numbers shown
    and `METRIC_DEFINITIONS`. results.csv has `<metric>_ci_low` / `_ci_high` columns.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(results, variant, compare)
    paper = {r["dataset"]: {"row": r["paper_dataset"], "variant": r["paper_variant"],
                            "cellsam_f1_50_mean": r["paper_cellsam_f1_50_mean"],
                            "cellpose_f1_50_mean": r["paper_cellpose_f1_50_mean"]}
             for r in rows if r["paper_cellsam_f1_50_mean"] is not None}
    full_meta = {**dict(meta or {}), "paper_variant": variant, "paper": paper,
                 "metrics": METRIC_DEFINITIONS}
    paths = {s: out / f"results.{s}" for s in ("json", "csv", "md", "png")}
    payload = {**{k: dict(v) for k, v in results.items()}, "meta": full_meta}
    # Each file under a temporary name, renamed when complete (never a half-written table).
    atomic_write_text(paths["json"], json.dumps(_clean(payload), indent=2) + "\n")
    bounds = [f"{k}_ci_{end}" for k in INTERVAL_KEYS for end in ("low", "high")]
    fields = ["dataset", *SCHEMA_KEYS, *EXTRA_KEYS, "paper_dataset", "paper_variant",
              "paper_cellsam_f1_50_mean", "paper_cellpose_f1_50_mean", *bounds]
    for r in rows:
        for k, (lo, hi) in (r.get("ci") or {}).items():
            r[f"{k}_ci_low"], r[f"{k}_ci_high"] = lo, hi
    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([_clean(r) for r in rows])
    atomic_write_text(paths["md"], markdown_table(results, variant, compare, results_title(meta),
                                                  (meta or {}).get("bootstrap")))
    with atomic_path(paths["png"]) as tmp:
        _bar_chart(tmp, rows, variant, compare)
    if records is not None:
        paths["per_image"] = per_image.write_per_image_csv(
            out / "results_per_image.csv", [per_image.image_metrics(r) for r in records])
        groups = _groups(records)
        curves = {name: dict(results[name].get("iou_curve") or per_image.iou_curve(
            [per_image.image_metrics(r) for r in groups.get(name, [])])) for name in results}
        paths["iou"] = out / "results_iou.png"
        with atomic_path(paths["iou"]) as tmp:
            iou_curve_chart(tmp, curves)
    return paths
