"""Masks from ground-truth boxes: the detector's upper bound, scored like a full model.

Every true nucleus of a split is prompted with its own box; the masks go through the same
decoding, post-processing and label composition as prediction (the run's inference settings
with no predicted-IoU filter, since every box is a real cell), and the label images are
scored with the project's metrics (F1@0.5, DeepCell F1@0.6, COCO mask mAP with the
predicted IoU as score). Trunk features come from the frozen-trunk cache, so a model whose
trunk is LiteMedSAM's (zero-shot, or trained with it frozen) shares one cache.

    python experiments/gt_box_rows.py --packaged --data data/dsb2018_fixed      # (a) zero-shot
    python experiments/gt_box_rows.py --ckpt outputs/dsb_lite/sam/checkpoints/last.ckpt \
        --data data/dsb2018_fixed                                               # (b) stage 2
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cellsam.data.datamodule import CellSplitDataset
from cellsam.data.feature_cache import build_feature_store, trunk_fingerprint
from cellsam.data.format import open_split
from cellsam.inference import InferenceSettings, resolve_settings
from cellsam.inference.decode import decode_cells
from cellsam.inference.postprocess import postprocess_cells
from cellsam.inference.predictor import cells_to_prediction
from cellsam.metrics.report import image_record, summarize
from cellsam.ops.masks import label_boxes_xyxy

KEYS = ("f1_50_mean", "deepcell_f1_60", "coco_map", "coco_ap50", "precision_50", "recall_50")


def load(args):
    if args.packaged:
        from cellsam.models.cellsam import build_cellsam

        finder = {"hidden_dim": 32, "ffn_dim": 64, "num_heads": 4, "num_encoder_layers": 0,
                  "num_decoder_layers": 1, "num_queries": 8}  # unused: boxes are given
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_cellsam({"variant": "lite_medsam", "checkpoint": "packaged"}, finder)
        return model, InferenceSettings.from_preset("paper"), "LiteMedSAM zero-shot"
    from cellsam.utils.checkpoint import load_model

    model, meta = load_model(args.ckpt)
    return model, resolve_settings(meta.get("inference")), str(args.ckpt)


@torch.no_grad()
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", type=Path, help="a stage-2 checkpoint")
    src.add_argument("--packaged", action="store_true", help="LiteMedSAM's packaged weights")
    ap.add_argument("--data", required=True, type=Path, help="converted dataset folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--cache-dir", type=Path, default=Path(".cache/features"))
    ap.add_argument("--out", type=Path, help="write the scores as JSON here")
    args = ap.parse_args(argv)

    model, settings, what = load(args)
    model.eval()
    settings = replace(settings, iou_threshold=-1.0)
    data = open_split(args.data, args.split)
    dataset = CellSplitDataset(data, data.name, model.image_size)
    start = time.perf_counter()
    store = build_feature_store(model.trunk, dataset, [0], args.cache_dir,
                                fingerprint=f"{trunk_fingerprint(model)}:trunk",
                                input_size=model.image_size, dtype="float16", batch_size=1)
    features_s = time.perf_counter() - start
    start = time.perf_counter()
    records = []
    s = model.image_size
    for i in range(len(data)):
        label = np.asarray(data.labels[i, 0], np.int64)
        h, w = label.shape
        boxes, _ = label_boxes_xyxy(label)
        scale = torch.tensor([s / w, s / h, s / w, s / h])
        boxes = torch.from_numpy(boxes).float() * scale
        embedding = model.embed(store.get(i, 0)[None])
        cells = decode_cells(model, embedding, boxes, torch.ones(len(boxes)), (h, w), settings)
        cells = postprocess_cells(cells, settings)
        for cell in cells:  # rank by the decoder's own quality estimate for COCO
            cell.score = float(cell.iou)
        pred = cells_to_prediction(sorted(cells, key=lambda c: -c.score), (h, w),
                                   settings.overlap)
        records.append(image_record(data.name, i, label, pred.labels, pred.scores))
    scores = summarize(records, coco=True)["all"]
    out = {"what": what, "split": args.split, "n_images": len(data),
           **{k: float(scores[k]) for k in KEYS},
           "seconds_features": features_s, "seconds_decode_and_score": time.perf_counter() - start}
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
