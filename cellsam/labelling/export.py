"""Per-cell tables and files of a labelled image: napari-style features, a `Prediction`
with ids 1..N, and `predict.py`'s label TIFF + per-cell CSV."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellsam.inference.predictor import Prediction
from cellsam.labelling import edits
from cellsam.ops.masks import label_boxes_xyxy, label_dtype


@dataclass
class CellInfo:
    """What is known of one cell: CellFinder's box `score` (NaN for a cell a person
    prompted, painted or merged), SAM's predicted `iou` of its last decoding (NaN when not
    decoded), its prompt `box` (xyxy image px, None if none) and its `origin`:
    `segment_all`, `box`, `points`, `merge` or `labels` (given or painted)."""

    score: float = math.nan
    iou: float = math.nan
    box: np.ndarray | None = None
    origin: str = "labels"


def cell_features(labels: np.ndarray, cells: Mapping[int, CellInfo]) -> dict[str, np.ndarray]:
    """Columns `[N]`, one row per id present in `labels` `[H, W]`, by id: `index` (the
    label value, as napari's Labels `features` want it), `area`, `score`, `predicted_iou`,
    `origin`; ids without a `CellInfo` get NaN scores and origin `labels`."""
    areas = edits.cell_areas(labels)
    ids = sorted(areas)
    info = [cells.get(i, CellInfo()) for i in ids]
    return {"index": np.asarray(ids, np.int64),
            "area": np.asarray([areas[i] for i in ids], np.int64),
            "score": np.asarray([c.score for c in info], np.float64),
            "predicted_iou": np.asarray([c.iou for c in info], np.float64),
            "origin": np.asarray([c.origin for c in info], dtype=object)}


def labels_to_prediction(labels: np.ndarray, cells: Mapping[int, CellInfo]) -> Prediction:
    """`labels` `[H, W]` renumbered 1..N (in id order) with each cell's score, IoU, box
    and prompt box (its box where it had no prompt): row `k` is the cell labelled `k + 1`."""
    relabelled, mapping = edits.renumber(np.asarray(labels))
    n = len(mapping)
    boxes, _ = label_boxes_xyxy(relabelled)
    info = [cells.get(old, CellInfo()) for old in mapping]
    prompt = [c.box if c.box is not None else boxes[k] for k, c in enumerate(info)]
    return Prediction(
        labels=relabelled.astype(label_dtype(n)),
        scores=np.asarray([c.score for c in info], np.float32),
        iou=np.asarray([c.iou for c in info], np.float32),
        boxes=boxes.astype(np.float32),
        prompt_boxes=np.asarray(prompt, np.float32).reshape(n, 4))


def save_labels(out_dir: str | Path, name: str, labels: np.ndarray,
                cells: Mapping[int, CellInfo], prepared: np.ndarray | None = None
                ) -> list[Path]:
    """Write `<name>.tif` (labels, ids 1..N, uint16 or uint32) and `<name>.csv` (id, area,
    centroid, bbox, score, predicted IoU; `nan` where unknown) with `predict.py`'s writers,
    each atomically; with `prepared` (`[3, H, W]`), also `<name>_overlay.png`."""
    from cellsam.tasks.predict import output_paths, write_outputs

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(out, name, labels_to_prediction(labels, cells), prepared)
    return output_paths(out, name, prepared is not None)


__all__ = ["CellInfo", "cell_features", "labels_to_prediction", "save_labels"]
