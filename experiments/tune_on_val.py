"""Choose inference thresholds on a validation split, from the frozen trunk's feature cache.

For a stage-2 checkpoint whose trunk is frozen, the val split's trunk features are read from
(or written to) the same cache the training runs use. CellFinder and the mask decoder run
once, at the lowest box threshold and with every predicted IoU kept; each combination of the
listed box and predicted-IoU thresholds then keeps its subset of those cells (a cell's mask
does not depend on which other boxes were decoded), applies the checkpoint's duplicate
suppression and composes the label image, so a setting costs only the metrics. Each is
scored by per-image mean F1@0.5 and DeepCell F1@0.6; the best F1@0.5 is printed as the
overrides to pass to `eval.py` on the test split (the test split is never read here).

    python experiments/tune_on_val.py --ckpt <stage-2 last.ckpt> \
        --data data/dsb2018_fixed --box 0.2 0.3 0.4 0.5 --iou 0.0 0.4
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from cellsam.data.datamodule import CellSplitDataset
from cellsam.data.feature_cache import build_feature_store, trunk_fingerprint
from cellsam.data.format import open_split
from cellsam.inference import CellSAMPredictor
from cellsam.inference.postprocess import Cell, suppress_duplicates
from cellsam.inference.predictor import cells_to_prediction
from cellsam.inference.settings import InferenceSettings
from cellsam.metrics.report import image_record, summarize


def kept_labels(cells: list[Cell], box: float, iou: float, settings: InferenceSettings,
                hw: tuple[int, int]) -> np.ndarray:
    """Label image `[H, W]` of the cells (in score order) that the thresholds keep, as the
    predictor composes them: box score above `box` (as `detections`), predicted IoU at
    least `iou` (as `decode_cells`), then `settings`' duplicate suppression and overlap rule."""
    kept = [c for c in cells if c.score > box and c.iou >= iou]
    if settings.duplicate_overlap is not None:
        kept = suppress_duplicates(kept, settings.duplicate_overlap)
    return cells_to_prediction(kept, hw, settings.overlap).labels


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="converted dataset folder")
    ap.add_argument("--split", default="val")
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/features"))
    ap.add_argument("--box", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5])
    ap.add_argument("--iou", type=float, nargs="+", default=[0.0, 0.4])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", type=Path, help="write the table as JSON here")
    args = ap.parse_args(argv)
    if args.split == "test":
        raise SystemExit("tune_on_val.py chooses settings: give it a validation split")

    base = CellSAMPredictor.from_checkpoint(args.ckpt, device="cpu")
    model = base.model.eval()
    data = open_split(args.data, args.split)
    dataset = CellSplitDataset(data, data.name, model.image_size)
    start = time.perf_counter()
    with torch.no_grad():
        store = build_feature_store(model.trunk, dataset, [0], args.cache_dir,
                                    fingerprint=f"{trunk_fingerprint(model)}:trunk",
                                    input_size=model.image_size, dtype="float16",
                                    batch_size=1)
    print(f"features of {len(store)} {args.split} tiles: {time.perf_counter() - start:.1f} s "
          f"({store.folder})")
    labels = [np.asarray(data.labels[i, 0]) for i in range(len(data))]
    hw = labels[0].shape
    if base.settings.kmeans_adjust:
        raise SystemExit(f"{args.ckpt}: kmeans_adjust moves the box threshold per image; "
                         "tune with it off")
    decode_all = base.configure(box_threshold=min(args.box), iou_threshold=-1.0,
                                duplicate_overlap=None)
    t = time.perf_counter()
    cells = []
    for s in range(0, len(store), args.batch):
        feats = torch.stack([store.get(i, 0) for i in range(s, min(s + args.batch, len(store)))])
        cells += decode_all.segment_inputs(None, [hw] * len(feats), feats)
    print(f"decoded {sum(map(len, cells))} cells of {len(cells)} tiles at box threshold "
          f"{min(args.box)}: {time.perf_counter() - t:.1f} s", flush=True)
    rows = []
    for box, iou in itertools.product(args.box, args.iou):
        t = time.perf_counter()
        preds = [kept_labels(c, box, iou, base.settings, hw) for c in cells]
        records = [image_record(data.name, i, t_, p, with_coco=False)
                   for i, (t_, p) in enumerate(zip(labels, preds))]
        scores = summarize(records, coco=False)["all"]
        rows.append({"box_threshold": box, "iou_threshold": iou,
                     **{k: scores[k] for k in ("f1_50_mean", "deepcell_f1_60", "precision_50",
                                               "recall_50")},
                     "seconds": time.perf_counter() - t})
        print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["f1_50_mean"])
    print(f"best on {args.split}: inference.box_threshold={best['box_threshold']} "
          f"inference.iou_threshold={best['iou_threshold']} (F1@0.5 {best['f1_50_mean']:.4f})")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "best": best}, indent=1))
    return best


if __name__ == "__main__":
    main()
