"""COCO box AP of detector outputs (stage-1 validation), per dataset and for the union.

Works on per-image records `{"dataset", "index", "gt_boxes" [N, 4], "boxes" [Q, 4],
"scores" [Q]}` with boxes as xyxy pixels; the COCO evaluation itself is `metrics.coco`
(at most 10,000 detections per image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cellsam.metrics.coco import evaluate_box_sets


def box_ap_by_dataset(
    records: Sequence[dict[str, Any]], max_dets: int = 10000
) -> dict[str, dict[str, float]]:
    """`{dataset: {"box_map", "box_ap50"}, ..., "all": {...}}` over the records."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["dataset"], []).append(r)
    out = {}
    for name, recs in [*sorted(groups.items()), ("all", list(records))]:
        if not recs:
            continue
        res = evaluate_box_sets(
            [np.asarray(r["gt_boxes"], np.float64) for r in recs],
            [np.asarray(r["boxes"], np.float64) for r in recs],
            [np.asarray(r["scores"], np.float64) for r in recs],
            max_dets=max_dets,
        )
        out[name] = {"box_map": res["bbox_mAP"], "box_ap50": res["bbox_AP50"]}
    return out
