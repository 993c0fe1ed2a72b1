"""Evaluation summaries in the `results.json` schema, the paper's numbers, and the writers.

Shared by the metrics callback (`cellsam.callbacks.segmentation_metrics`) and `eval.py`:

1. `image_record(...)` turns one (true, predicted) label-image pair into a small picklable
   dict of counts (F1 at IoU 0.5, DeepCell counts) and, for COCO, compact RLEs. Records are
   what DDP ranks gather (`cellsam.utils.distributed.gather_records`), so every rank can
   compute exactly the numbers of a single-process run.
2. `summarize(records)` -> `{dataset: {SCHEMA_KEYS...}, ..., "all": {...}}`.
3. `write_results(...)` writes `results.json`, `results.csv`, `results.md`, `results.png`.

Metric definitions (REFERENCE section 5) are in `METRIC_DEFINITIONS`; the F1 conventions
(undefined per-image F1 counts as 0) are those of `cellsam.metrics.f1`. The file writers
live here too so both callers produce identical files; matplotlib is imported lazily.
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

from .coco import ImageDetections, detections_from_label, evaluate_coco, label_to_rles
from .deepcell import DeepCellCounts, deepcell_counts
from .f1 import MatchCounts, match_counts
from .matching import compute_overlaps
from .paper import PAPER_F1, paper_dataset, paper_f1

__all__ = [
    "COLUMNS",
    "METRIC_DEFINITIONS",
    "PAPER_F1",
    "SCHEMA_KEYS",
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
)
EXTRA_KEYS: tuple[str, ...] = ("n_pred_cells", "catastrophes")

METRIC_DEFINITIONS: dict[str, str] = {
    "n_images": "images evaluated (each once, also under DDP)",
    "n_cells": "ground-truth cells",
    "n_pred_cells": "predicted cells",
    "f1_50_mean": "per-image F1 at IoU 0.5 (one-to-one linear assignment), mean over images; "
                  "an image with no true and no predicted cell scores 0 (CellSAM release metric)",
    "f1_50_pooled": "F1 at IoU 0.5 from TP, FP, FN summed over images",
    "precision_50": "pooled precision at IoU 0.5 = TP / predicted cells",
    "recall_50": "pooled recall at IoU 0.5 = TP / true cells",
    "deepcell_f1_60": "DeepCell object F1 (Greenwald et al. 2022; IoU > 0.6, toolbox quirks "
                      "included), from counts summed over images",
    "deepcell_precision_60": "DeepCell precision = correct / predicted cells (pooled)",
    "deepcell_recall_60": "DeepCell recall = correct / true cells (pooled)",
    "splits": "DeepCell split events (one true cell covered by several predictions), summed",
    "merges": "DeepCell merge events (several true cells covered by one prediction), summed",
    "catastrophes": "DeepCell catastrophes (many-to-many groups), summed",
    "coco_map": "COCO mask mAP over IoU 0.50:0.95, one class, <= 10,000 detections per image, "
                "each mask ranked by its CellFinder box score",
    "coco_ap50": "COCO mask AP at IoU 0.5 (same settings)",
    "coco_box_map": "COCO box mAP over IoU 0.50:0.95 of the predicted cells' tight boxes",
    "coco_box_ap50": "COCO box AP at IoU 0.5",
}

# -- per-image records --------------------------------------------------------------------------
def image_record(
    dataset: str,
    index: int,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    scores: Sequence[float] | np.ndarray | None = None,
    with_coco: bool = True,
) -> dict[str, Any]:
    """Everything the summaries need from one image, as plain numbers and RLEs.

    Args:
        dataset, index: the image's identity (the DDP de-duplication key).
        y_true: true label image `[H, W]` (0 = background).
        y_pred: predicted label image `[H, W]`.
        scores: `[N]` score per predicted object in increasing id order (COCO ranking);
            all 1 when None.
        with_coco: also store RLEs for COCO (skip on epochs without COCO: it is the
            bulkiest part of a record).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    ov = compute_overlaps(y_true, y_pred)  # one pixel pass shared by F1 and DeepCell
    mc = match_counts(y_true, y_pred, (0.5,), overlaps=ov)[0]
    dc = deepcell_counts(y_true, y_pred, overlaps=ov)
    rec: dict[str, Any] = {
        "dataset": str(dataset), "index": int(index), "n_true": mc.n_true,
        "n_pred": mc.n_pred, "tp_50": mc.tp, "f1_50": mc.f1, "deepcell": dc.to_vector(),
    }
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
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["dataset"], []).append(r)
    names = [n for n in (order or []) if n in groups]
    names += sorted(set(groups) - set(names))
    out = {name: _summary(groups[name], coco, max_dets) for name in names}
    # One dataset: the union is the same set (and COCO is the slow part), so reuse it.
    out["all"] = dict(out[names[0]]) if len(names) == 1 else _summary(list(records), coco,
                                                                        max_dets)
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


#: Markdown / CSV columns: (key, header naming the metric).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("n_images", "Images"),
    ("n_cells", "True cells"),
    ("f1_50_mean", "F1@0.5 per-image mean (ours; CellSAM release metric)"),
    ("paper_cellsam_f1_50_mean", "F1@0.5 per-image mean, CellSAM {variant} (paper)"),
    ("paper_cellpose_f1_50_mean", "F1@0.5 per-image mean, Cellpose {variant} (paper)"),
    ("f1_50_pooled", "F1@0.5 pooled"),
    ("precision_50", "Precision@0.5 pooled"),
    ("recall_50", "Recall@0.5 pooled"),
    ("deepcell_f1_60", "DeepCell F1@0.6"),
    ("deepcell_precision_60", "DeepCell precision@0.6"),
    ("deepcell_recall_60", "DeepCell recall@0.6"),
    ("splits", "DeepCell splits"),
    ("merges", "DeepCell merges"),
    ("coco_map", "COCO mask mAP@[.5:.95]"),
    ("coco_ap50", "COCO mask AP50"),
    ("coco_box_map", "COCO box mAP@[.5:.95]"),
    ("coco_box_ap50", "COCO box AP50"),
)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.3f}"


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
) -> str:
    """A Markdown table like the paper's: one row per dataset (`all` last when there are
    several), our metrics with the paper's per-image mean F1@0.5 beside them."""
    rows = _rows(results, variant, compare)
    if len(rows) == 2:  # one dataset: its "all" row repeats it
        rows = rows[:1]
    cols = [(k, h) for k, h in COLUMNS if compare or not k.startswith("paper_")]
    head = ["Dataset"] + [h.format(variant=variant) for _, h in cols]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        name = row["dataset"]
        if compare and row.get("paper_variant") not in (None, variant):
            name += f" ({row['paper_variant']})"
        lines.append("| " + " | ".join([name] + [_fmt(row.get(k)) for k, _ in cols]) + " |")
    if compare:
        lines += ["", f"Paper columns: per-image mean F1 at IoU 0.5 of the {variant} models from "
                  "the authors' released evaluation results (LIVECell: zero-shot); n/a where "
                  "the paper has no such dataset. Our F1@0.5 column uses the same definition."]
    return "\n".join(lines) + "\n"


def _bar_chart(path: Path, rows: list[dict[str, Any]], variant: str, compare: bool) -> None:
    """Grouped bars of per-image mean F1@0.5 per dataset: ours, then the paper's."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in rows if r["dataset"] != "all"] or rows
    series = [("ours", "f1_50_mean", "#1f77b4")]
    if compare:
        series += [(f"CellSAM {variant} (paper)", "paper_cellsam_f1_50_mean", "#ff7f0e"),
                   (f"Cellpose {variant} (paper)", "paper_cellpose_f1_50_mean", "#7f7f7f")]
    x = np.arange(len(rows))
    width = 0.8 / len(series)
    fig = Figure(figsize=(max(6.0, 1.2 * len(rows) + 2), 4.5))  # Agg canvas: no GUI backend
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, (label, key, color) in enumerate(series):
        vals = np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, np.nan_to_num(vals), width,
                      label=label, color=color)
        ax.bar_label(bars, ["" if np.isnan(v) else f"{v:.2f}" for v in vals], fontsize=6)
    ticks = [r["dataset"] + (f"\n({r['paper_variant']})" if compare and r.get("paper_variant")
                             not in (None, variant) else "") for r in rows]
    ax.set_xticks(x, ticks, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1 at IoU 0.5 (per-image mean)")
    ax.set_title("Per-image mean F1@0.5 per dataset")
    # Legend above the axes: inside, it would hide bars near 1.0.
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=len(series),
              fontsize="small", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def results_title(meta: dict[str, Any] | None) -> str | None:
    """Table title from run metadata: checkpoint, split, preset and any changed settings."""
    if not meta:
        return None
    title = " ".join(f"{k}={meta[k]}" for k in ("checkpoint", "split", "inference_preset")
                     if k in meta)
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
) -> dict[str, Path]:
    """Write `results.{json,csv,md,png}` into `output_dir`; returns their paths by suffix.

    results.json: `{<dataset>: {SCHEMA_KEYS...}, ..., "all": {...}, "meta": {...}}` with NaN
    written as null; `meta` also holds the paper's numbers shown and `METRIC_DEFINITIONS`.
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
    fields = ["dataset", *SCHEMA_KEYS, *EXTRA_KEYS, "paper_dataset", "paper_variant",
              "paper_cellsam_f1_50_mean", "paper_cellpose_f1_50_mean"]
    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([_clean(r) for r in rows])
    atomic_write_text(paths["md"], markdown_table(results, variant, compare, results_title(meta)))
    with atomic_path(paths["png"]) as tmp:
        _bar_chart(tmp, rows, variant, compare)
    return paths
