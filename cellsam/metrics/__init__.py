"""Evaluation metrics on label images (numpy int arrays `[H, W]`, 0 = background).

Three object-level scores (REFERENCE section 5), each with its own module:

- `f1`: F1 at IoU 0.5 (and 0.55..0.95) as the released CellSAM evaluation computes it,
  per-image mean and pooled; also the Cellpose / StarDist "AP" = TP / (TP + FP + FN).
- `deepcell`: DeepCell object metrics (Greenwald et al. 2022) with the toolbox's counts
  of splits, merges and catastrophes, quirks included.
- `coco`: COCO mask / box mAP for one class with up to 10,000 detections per image.

Further families, each equal to its reference: `cellpose_ap` (Cellpose AP@t and AJI),
`panoptic` (PQ = DQ x SQ), `segmentation_accuracy` (micro-sam's mSA, SA50, SA75).

`matching` holds the shared one-pass overlap computation and the one-to-one matching.
The results files: `report` (per-image records, summaries, writers), `per_image` (one row
per image of every metric), `bootstrap` (confidence intervals over images), `names` (table
headers and definitions), `plots`. Pure numpy / scipy / pycocotools (matplotlib lazily):
nothing here imports torch.
"""

from .cellpose_ap import (
    CellposeAP,
    aggregated_jaccard_index,
    cellpose_ap,
    match_count_then_iou,
)
from .coco import (
    ImageDetections,
    coco_gt_from_labels,
    detections_from_label,
    evaluate_box_sets,
    evaluate_coco,
    label_to_rles,
)
from .deepcell import DeepCellCounts, deepcell_counts, evaluate_deepcell
from .f1 import (
    DEFAULT_THRESHOLDS,
    F1Accumulator,
    MatchCounts,
    evaluate_f1,
    f1_score,
    match_counts,
)
from .matching import (
    Overlaps,
    assign_one_to_one,
    compute_overlaps,
    iou_matrix,
    match_pairs,
)
from .panoptic import PanopticQuality, panoptic_quality
from .segmentation_accuracy import (
    MSA_THRESHOLDS,
    SegmentationAccuracy,
    mean_segmentation_accuracy,
    segmentation_accuracy,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MSA_THRESHOLDS",
    "CellposeAP",
    "DeepCellCounts",
    "F1Accumulator",
    "ImageDetections",
    "MatchCounts",
    "Overlaps",
    "PanopticQuality",
    "SegmentationAccuracy",
    "aggregated_jaccard_index",
    "assign_one_to_one",
    "cellpose_ap",
    "coco_gt_from_labels",
    "compute_overlaps",
    "deepcell_counts",
    "detections_from_label",
    "evaluate_box_sets",
    "evaluate_coco",
    "evaluate_deepcell",
    "evaluate_f1",
    "f1_score",
    "iou_matrix",
    "label_to_rles",
    "match_count_then_iou",
    "match_counts",
    "match_pairs",
    "mean_segmentation_accuracy",
    "panoptic_quality",
    "segmentation_accuracy",
]
