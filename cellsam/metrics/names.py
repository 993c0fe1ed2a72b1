"""Names and definitions of every metric in the results tables, in one place.

Each table header says the metric's family and IoU threshold (`F1@0.5 (CellSAM)`,
`DeepCell F1@0.6`, `AP@0.5 (Cellpose)`, `COCO mask mAP@[.5:.95]`, `PQ@0.5`, `mSA`), because
the same word ("AP", "F1") means different numbers in different tools.

- `METRIC_DEFINITIONS`: results.json keys -> one-line definitions (written into its `meta`).
- `COLUMNS` / `FAMILY_COLUMNS`: (key, header) of the two Markdown tables and results.csv.
- `PER_IMAGE_LABELS`: results_per_image.csv columns -> headers (the paired comparison).
"""

from __future__ import annotations

__all__ = ["COLUMNS", "FAMILY_COLUMNS", "INTERVAL_KEYS", "METRIC_DEFINITIONS", "PER_IMAGE_LABELS",
           "label_of"]

METRIC_DEFINITIONS: dict[str, str] = {
    "n_images": "images evaluated (each once, also under DDP)",
    "n_cells": "ground-truth cells",
    "n_pred_cells": "predicted cells",
    "f1_50_mean": "F1@0.5 (CellSAM): per-image F1 at IoU 0.5 (one-to-one linear assignment), "
                  "mean over images; an image with no true and no predicted cell scores 0 "
                  "(CellSAM release metric)",
    "f1_50_pooled": "F1@0.5 (CellSAM) from TP, FP, FN summed over images",
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
                "each mask ranked by its CellFinder box score (score 1 for label images "
                "scored from a folder)",
    "coco_ap50": "COCO mask AP at IoU 0.5 (same settings)",
    "coco_box_map": "COCO box mAP over IoU 0.50:0.95 of the predicted cells' tight boxes",
    "coco_box_ap50": "COCO box AP at IoU 0.5",
    "cellpose_ap_50": "Cellpose AP@0.5 = TP / (TP + FP + FN) per image (cellpose.metrics."
                      "average_precision), mean over the images where it is defined (not "
                      "both empty)",
    "cellpose_ap_75": "Cellpose AP at IoU 0.75, as cellpose_ap_50",
    "cellpose_ap_90": "Cellpose AP at IoU 0.9, as cellpose_ap_50",
    "aji": "Cellpose's aggregated Jaccard index per image (cellpose.metrics."
           "aggregated_jaccard_index), mean over the images where it is defined",
    "pq_50": "panoptic quality PQ = DQ x SQ at IoU 0.5 per image (HoVer-Net / CellViT; "
             "stardist.matching), mean over images (0 for an image without objects)",
    "dq_50": "detection quality TP / (TP + FP/2 + FN/2) at IoU 0.5, mean over images",
    "sq_50": "segmentation quality (mean IoU of the TP pairs) at IoU 0.5, mean over images "
             "(0 for an image without TP)",
    "pq_50_pooled": "PQ at IoU 0.5 from TP IoU sums and counts pooled over images (Kirillov "
                    "et al. 2019, dataset level)",
    "msa": "micro-sam mean segmentation accuracy: SA(t) = TP / (TP + FP + FN) averaged over "
           "t in np.arange(0.5, 1.0, 0.05) (elf.evaluation.mean_segmentation_accuracy), mean "
           "over images",
    "sa50": "micro-sam SA at IoU 0.5, mean over images",
    "sa75": "micro-sam SA at np.arange's 0.75 (0.7500000000000002), mean over images",
    "dice": "foreground Dice 2|T & P| / (|T| + |P|) of the two label images' foregrounds "
            "(any cell vs background; SAC's Dice), per image (1 when both are empty), mean "
            "over images",
}

#: Main table: (key, header); `{variant}` is filled with the paper's model variant.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("n_images", "Images"),
    ("n_cells", "True cells"),
    ("f1_50_mean", "F1@0.5 (CellSAM), per-image mean (ours)"),
    ("paper_cellsam_f1_50_mean", "F1@0.5 (CellSAM), CellSAM {variant} (paper)"),
    ("paper_cellpose_f1_50_mean", "F1@0.5 (CellSAM), Cellpose {variant} (paper)"),
    ("f1_50_pooled", "F1@0.5 (CellSAM), pooled"),
    ("precision_50", "Precision@0.5 (CellSAM), pooled"),
    ("recall_50", "Recall@0.5 (CellSAM), pooled"),
    ("deepcell_f1_60", "DeepCell F1@0.6"),
    ("deepcell_precision_60", "DeepCell precision@0.6"),
    ("deepcell_recall_60", "DeepCell recall@0.6"),
    ("splits", "DeepCell splits"),
    ("merges", "DeepCell merges"),
    ("coco_map", "COCO mask mAP@[.5:.95]"),
    ("coco_ap50", "COCO mask AP@0.5"),
    ("coco_box_map", "COCO box mAP@[.5:.95]"),
    ("coco_box_ap50", "COCO box AP@0.5"),
)

#: Second table: the other tools' metric families.
FAMILY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("cellpose_ap_50", "AP@0.5 (Cellpose)"),
    ("cellpose_ap_75", "AP@0.75 (Cellpose)"),
    ("cellpose_ap_90", "AP@0.9 (Cellpose)"),
    ("aji", "AJI (Cellpose)"),
    ("pq_50", "PQ@0.5"),
    ("dq_50", "DQ@0.5"),
    ("sq_50", "SQ@0.5"),
    ("pq_50_pooled", "PQ@0.5 pooled"),
    ("msa", "mSA (micro-sam)"),
    ("sa50", "SA@0.5 (micro-sam)"),
    ("sa75", "SA@0.75 (micro-sam)"),
    ("dice", "Foreground Dice"),
)

#: Headline metrics that get a bootstrap confidence interval (see `bootstrap.HEADLINE`).
INTERVAL_KEYS: tuple[str, ...] = (
    "f1_50_mean", "f1_50_pooled", "deepcell_f1_60", "cellpose_ap_50", "cellpose_ap_75", "aji",
    "pq_50", "msa",
)

_THRESHOLDS = ("50", "55", "60", "65", "70", "75", "80", "85", "90", "95")

#: results_per_image.csv metric columns -> headers.
PER_IMAGE_LABELS: dict[str, str] = {
    **{f"f1_{t}": f"F1@0.{t.rstrip('0')} (CellSAM)" for t in _THRESHOLDS},
    "precision_50": "Precision@0.5 (CellSAM)",
    "recall_50": "Recall@0.5 (CellSAM)",
    "deepcell_f1_60": "DeepCell F1@0.6",
    "deepcell_precision_60": "DeepCell precision@0.6",
    "deepcell_recall_60": "DeepCell recall@0.6",
    **{f"cellpose_ap_{t}": f"AP@0.{t.rstrip('0')} (Cellpose)" for t in _THRESHOLDS},
    "aji": "AJI (Cellpose)",
    "pq_50": "PQ@0.5",
    "dq_50": "DQ@0.5",
    "sq_50": "SQ@0.5",
    "msa": "mSA (micro-sam)",
    "sa50": "SA@0.5 (micro-sam)",
    "sa75": "SA@0.75 (micro-sam)",
    "dice": "Foreground Dice",
}


def label_of(key: str) -> str:
    """The header of a results or per-image key (the key itself when it has none)."""
    for k, h in (*COLUMNS, *FAMILY_COLUMNS):
        if k == key:
            return h
    return PER_IMAGE_LABELS.get(key, key)
