"""COCO mask ("segm") and box ("bbox") mAP for one class, up to 10,000 detections/image.

The standard COCO evaluator keeps at most 100 detections per image (`maxDets[-1]`),
far fewer than the cells of a dense field of view. Here `params.maxDets` is
`[1, 100, max_dets]` (default `max_dets = 10000`) and the numbers are read from
`eval["precision"]` `[T, R, K, A, M]` at the `max_dets` column yourself, so no backend
can silently cap at 100. Only the "all" area range is evaluated (the small / medium /
large split is meaningless for cells and costs 4x the time in pycocotools).

- `mAP`: mean precision over IoU 0.50:0.05:0.95 and the 101 recall points;
- `AP50`, `AP75`: the same at IoU 0.5 / 0.75.

Two backends give the same numbers (tests check 1e-6): `"faster"` (faster-coco-eval,
C++ matching; the default, many times faster with thousands of cells per image, see
experiments/benchmarks/bench_metrics.py) and `"pycocotools"` (the reference Python
evaluator). Conventions: no ground-truth object in the whole set -> NaN (undefined); no
detection at all but some ground truth -> 0. Images without ground truth still count
their detections as false positives; images with neither are ignored, as in COCO.
Each detection is ranked by its own score; tied scores may rank differently in the two
backends.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_utils

from .matching import relabel

__all__ = [
    "ImageDetections",
    "coco_gt_from_labels",
    "detections_from_label",
    "evaluate_box_sets",
    "evaluate_coco",
    "label_to_rles",
]

Backend = Literal["faster", "pycocotools"]


def label_to_rles(
    label: np.ndarray,
) -> tuple[list[dict], np.ndarray, np.ndarray, np.ndarray]:
    """COCO RLEs of all objects of a label image `[H, W]`, in one pass over the pixels.

    Returns `(rles, ids [N], boxes_xywh [N, 4], areas [N])`: one RLE (counts as str) per
    object in increasing id order, the ids, tight pixel boxes (x, y, w, h) as COCO's
    `toBbox` gives them, and pixel counts. Runs are found on the column-major pixel order
    once for the whole image, instead of encoding N full-size masks.
    """
    label = np.asarray(label)
    h, w = label.shape
    flat, ids, areas = relabel(label.T)  # ravel of the transpose = column-major order
    if ids.size == 0:
        return [], ids, np.zeros((0, 4)), areas
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    vals = flat[starts]
    lens = np.diff(np.r_[starts, flat.size])
    fg = vals > 0
    starts, vals, lens = starts[fg], vals[fg], lens[fg]
    order = np.argsort(vals, kind="stable")  # group runs by object, keep pixel order
    starts, vals, lens = starts[order], vals[order], lens[order]
    first = np.r_[True, vals[1:] != vals[:-1]]
    ends = starts + lens
    prev_end = np.r_[0, ends[:-1]]
    gaps = np.where(first, starts, starts - prev_end)  # zeros before each run
    inter = np.empty(2 * starts.size, np.int64)
    inter[0::2], inter[1::2] = gaps, lens
    bounds = np.r_[np.flatnonzero(first), starts.size]
    last_end = ends[bounds[1:] - 1]
    # Trailing background run only when there is one: pycocotools' own encoding (and so
    # the RLE string) has no zero-length last run for an object touching the last pixel.
    objs = [
        {
            "size": [h, w],
            "counts": inter[2 * a : 2 * b].tolist() + ([int(h * w - e)] if e < h * w else []),
        }
        for a, b, e in zip(bounds[:-1], bounds[1:], last_end)
    ]
    rles = mask_utils.frPyObjects(objs, h, w)
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    # Boxes: column = pos // h, row = pos % h over each object's runs.
    col0 = np.minimum.reduceat(starts // h, bounds[:-1])
    col1 = np.maximum.reduceat((ends - 1) // h, bounds[:-1])
    row0 = np.minimum.reduceat(starts % h, bounds[:-1])
    row1 = np.maximum.reduceat((ends - 1) % h, bounds[:-1])
    boxes = np.stack([col0, row0, col1 - col0 + 1, row1 - row0 + 1], 1).astype(np.float64)
    return rles, ids, boxes, areas


@dataclass
class ImageDetections:
    """Detections of one image.

    Attributes:
        rles: one COCO RLE dict per detection (`size` [H, W], counts str or bytes).
        scores: `[N]` confidence of each detection (ranks it in the precision curve).
        boxes_xyxy: optional `[N, 4]` boxes (x0, y0, x1, y1) in pixels, x1/y1 exclusive,
            for the "bbox" evaluation; taken from the masks when None.
    """

    rles: list[dict]
    scores: np.ndarray
    boxes_xyxy: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, np.float64).reshape(-1)
        if len(self.rles) != self.scores.size:
            raise ValueError(f"{len(self.rles)} masks but {self.scores.size} scores")
        if self.boxes_xyxy is not None:
            self.boxes_xyxy = np.asarray(self.boxes_xyxy, np.float64).reshape(-1, 4)
            if self.boxes_xyxy.shape[0] != self.scores.size:
                raise ValueError("need one box per detection")


def detections_from_label(
    label: np.ndarray, scores: Sequence[float] | np.ndarray | Mapping[int, float]
) -> ImageDetections:
    """Detections from a predicted label image `[H, W]` and per-object scores: either a
    sequence `[N]` aligned with the sorted object ids, or a mapping id -> score."""
    rles, ids, boxes, _ = label_to_rles(label)
    if isinstance(scores, Mapping):
        sc = np.array([scores[int(i)] for i in ids], np.float64)
    else:
        sc = np.asarray(scores, np.float64).reshape(-1)
        if sc.size != ids.size:
            raise ValueError(f"label has {ids.size} objects but {sc.size} scores were given")
    xyxy = boxes.copy()
    xyxy[:, 2:] += xyxy[:, :2]
    return ImageDetections(rles, sc, xyxy)


def coco_gt_from_labels(labels: Sequence[np.ndarray]) -> dict:
    """COCO ground-truth dict (image ids 1..n, annotation ids from 1, category 1) from
    label images `[H, W]`."""
    images, anns = [], []
    for i, lab in enumerate(labels, start=1):
        lab = np.asarray(lab)
        images.append({"id": i, "height": int(lab.shape[0]), "width": int(lab.shape[1])})
        # (pycocotools' mask.area fails on >255 masks with numpy 2; use our own counts.)
        rles, _, boxes, areas = label_to_rles(lab)
        for rle, box, area in zip(rles, boxes, areas):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(area),
                    "bbox": [float(v) for v in box],
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}


def _as_detections(item: Any) -> ImageDetections:
    if isinstance(item, ImageDetections):
        return item
    if isinstance(item, tuple) and len(item) == 2:
        return detections_from_label(item[0], item[1])
    raise TypeError("detections must be ImageDetections or (label image, scores) tuples")


def _detection_dicts(image_id: int, det: ImageDetections) -> list[dict]:
    if det.boxes_xyxy is not None:
        xywh = det.boxes_xyxy.copy()
        xywh[:, 2:] -= xywh[:, :2]
    elif det.rles:
        xywh = np.asarray(mask_utils.toBbox(det.rles), np.float64).reshape(-1, 4)
    else:
        xywh = np.zeros((0, 4))
    return [
        {
            "image_id": image_id,
            "category_id": 1,
            "segmentation": rle,
            "bbox": [float(v) for v in box],
            "score": float(s),
        }
        for rle, box, s in zip(det.rles, xywh, det.scores)
    ]


def _precision_array(
    gt_dict: dict, dts: list[dict], iou_type: str, backend: Backend, max_dets: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Run one backend; returns (precision [T, R, K, A, M], iouThrs [T], index of max_dets)."""
    max_list = sorted({1, 100, int(max_dets)} - {0})
    sink = io.StringIO()
    # Both evaluators write into the annotation dicts ("ignore", "id", "area"): copy.
    gt_dict = {**gt_dict, "annotations": [dict(a) for a in gt_dict["annotations"]]}
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(sink):
            gt = COCO()
            gt.dataset = gt_dict
            gt.createIndex()
            dt = gt.loadRes([dict(d) for d in dts])  # loadRes writes into the dicts
            ev = COCOeval(gt, dt, iou_type)
    elif backend == "faster":
        from faster_coco_eval import COCO as FCOCO
        from faster_coco_eval import COCOeval_faster

        with contextlib.redirect_stdout(sink):
            gt = FCOCO(gt_dict)
            dt = gt.loadRes([dict(d) for d in dts])
            ev = COCOeval_faster(gt, dt, iou_type, print_function=lambda *a, **k: None)
    else:
        raise ValueError(f"unknown backend {backend!r}: use 'faster' or 'pycocotools'")
    ev.params.maxDets = max_list
    ev.params.areaRng = [[0.0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    with contextlib.redirect_stdout(sink):
        ev.evaluate()
        ev.accumulate()
    m = list(ev.params.maxDets).index(int(max_dets))
    return np.asarray(ev.eval["precision"]), np.asarray(ev.params.iouThrs), m


def _summaries(precision: np.ndarray, iou_thrs: np.ndarray, m: int) -> dict[str, float]:
    """mAP / AP50 / AP75 from precision `[T, R, K, A, M]` (class 0, area "all")."""
    p = precision[:, :, 0, 0, m]  # [T, R]

    def mean_valid(x: np.ndarray) -> float:
        x = x[x > -1]  # -1 marks "no ground truth" in COCO's arrays
        return float(x.mean()) if x.size else float("nan")

    out = {"mAP": mean_valid(p)}
    for t, name in ((0.5, "AP50"), (0.75, "AP75")):
        idx = np.flatnonzero(np.isclose(iou_thrs, t))
        out[name] = mean_valid(p[idx[0]]) if idx.size else float("nan")
    return out


def _run_summaries(
    gt_dict: dict, dts: list[dict], iou_type: str, backend: Backend, max_dets: int
) -> dict[str, float]:
    """mAP / AP50 / AP75 with the empty-set conventions of this module."""
    if not gt_dict["annotations"]:
        return {"mAP": float("nan"), "AP50": float("nan"), "AP75": float("nan")}
    if not dts:
        return {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0}
    return _summaries(*_precision_array(gt_dict, dts, iou_type, backend, max_dets))


def evaluate_coco(
    gt: Sequence[np.ndarray] | dict,
    detections: Sequence[Any] | Mapping[int, Any],
    iou_types: Sequence[str] = ("segm", "bbox"),
    backend: Backend = "faster",
    max_dets: int = 10000,
) -> dict[str, float]:
    """COCO mAP (IoU 0.50:0.95), AP50 and AP75 of one class.

    Args:
        gt: ground-truth label images `[H, W]` (one per image), or a prebuilt COCO
            ground-truth dict (`images`, `annotations`, `categories`) whose category is 1.
        detections: per image, an `ImageDetections` or a tuple `(label [H, W], scores)`;
            a sequence in the order of `gt` (of `gt["images"]` for a dict), or a
            mapping image id -> detections (missing images have no detection).
        iou_types: any of "segm" (masks) and "bbox" (boxes).
        backend: "faster" (faster-coco-eval, default) or "pycocotools".
        max_dets: detections kept per image, highest scores first.

    Returns:
        `{"segm_mAP", "segm_AP50", "segm_AP75", "bbox_mAP", ...}` for the types asked;
        NaN where there is no ground truth at all, 0 where there is no detection at all.
    """
    gt_dict = gt if isinstance(gt, dict) else coco_gt_from_labels(gt)
    image_ids = [int(im["id"]) for im in gt_dict["images"]]
    if isinstance(detections, Mapping):
        pairs = [(int(k), v) for k, v in detections.items()]
    else:
        if len(detections) != len(image_ids):
            raise ValueError(f"{len(detections)} detection sets for {len(image_ids)} images")
        pairs = list(zip(image_ids, detections))
    unknown = {k for k, _ in pairs} - set(image_ids)
    if unknown:
        raise ValueError(f"detections for unknown image ids {sorted(unknown)[:5]}")
    dts = [d for k, v in pairs for d in _detection_dicts(k, _as_detections(v))]
    out: dict[str, float] = {}
    for iou_type in iou_types:
        if iou_type not in ("segm", "bbox"):
            raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
        res = _run_summaries(gt_dict, dts, iou_type, backend, max_dets)
        out.update({f"{iou_type}_{k}": v for k, v in res.items()})
    return out


def evaluate_box_sets(
    gt_boxes: Sequence[np.ndarray],
    det_boxes: Sequence[np.ndarray],
    det_scores: Sequence[np.ndarray],
    backend: Backend = "faster",
    max_dets: int = 10000,
) -> dict[str, float]:
    """COCO box mAP / AP50 / AP75 from boxes alone (no masks): a detector's evaluation.

    Args:
        gt_boxes: per image `[N, 4]` ground-truth boxes, xyxy pixels.
        det_boxes: per image `[Q, 4]` detected boxes, xyxy pixels.
        det_scores: per image `[Q]` scores.

    Returns:
        `{"bbox_mAP", "bbox_AP50", "bbox_AP75"}` (NaN without ground truth, 0 without
        detections).
    """
    images, anns, dts = [], [], []
    for i, (gt, boxes, scores) in enumerate(zip(gt_boxes, det_boxes, det_scores), start=1):
        images.append({"id": i})
        for x0, y0, x1, y1 in np.asarray(gt, np.float64).reshape(-1, 4):
            w, h = x1 - x0, y1 - y0
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "bbox": [x0, y0, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for (x0, y0, x1, y1), s in zip(np.asarray(boxes, np.float64).reshape(-1, 4), scores):
            dts.append(
                {
                    "image_id": i,
                    "category_id": 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(s),
                }
            )
    gt_dict = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}
    res = _run_summaries(gt_dict, dts, "bbox", backend, max_dets)
    return {f"bbox_{k}": v for k, v in res.items()}
