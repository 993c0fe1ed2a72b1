"""Labelling-loop latency with the light encoder (LiteMedSAM) on a real 512x512 DSB image:
the image embedding (once per image), one box prompt after it (the target: under 0.3 s on
the 2-core CPU), one negative click refining a cell, and Segment all.

The image: the DSB 2018 fluorescence image of 512 x 640 px with the most nuclei (ties by
id), cropped to its top-left 512 x 512; its true nuclei give the box prompts. Box and click
prompts run on a prompt-only session (the packaged LiteMedSAM weights,
`LabellingSession.prompt_only`).
Segment all needs a detector: with `--ckpt` a trained stage-2 checkpoint (e.g. of
`model=lite`); without one, CellSAM on the packaged LiteMedSAM with a random CellFinder,
which finds no real cells, so its box count is fixed to the image's true cell count (box
threshold 0, `max_detections` = cells, no IoU filter): the decoding work a trained model
would do on this image.

    python experiments/benchmarks/bench_box_prompt.py
    python experiments/benchmarks/bench_box_prompt.py --reps 1 --boxes 10 --segment-reps 1
    python experiments/benchmarks/bench_box_prompt.py --ckpt outputs/.../last.ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "dsb2018_fixed"


def load_image(root: Path, size: int = 512) -> tuple[str, np.ndarray, np.ndarray]:
    """The 512 x 640 fluorescence image with the most nuclei, cropped to `size` x `size`,
    and its labels."""
    import imageio.v3 as iio
    import tifffile

    meta = json.loads((root / "meta.json").read_text())
    name = min((-m["n_objects"], m["id"]) for m in meta if m["modality"] == "fluorescence"
               and (m["h"], m["w"]) == (512, 640))[1]
    image = iio.imread(root / "images" / f"{name}.png")[:size, :size]
    label = tifffile.imread(root / "labels" / f"{name}.tif")[:size, :size].astype(np.int64)
    return name, image, label


def stats(seconds: list[float]) -> str:
    s = sorted(seconds)
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    return (f"median {1000 * statistics.median(s):.1f} ms, mean {1000 * statistics.mean(s):.1f}"
            f" ms, p90 {1000 * p90:.1f} ms, min {1000 * s[0]:.1f} ms (n={len(s)})")


def bench_prompts(image: np.ndarray, label: np.ndarray, reps: int, max_boxes: int) -> None:
    from cellsam.labelling import LabellingSession
    from cellsam.ops.masks import label_boxes_xyxy

    t0 = time.perf_counter()
    session = LabellingSession.prompt_only(image, device="cpu")
    t1 = time.perf_counter()
    boxes, ids = label_boxes_xyxy(label)
    boxes, ids = boxes[:max_boxes], ids[:max_boxes]
    session.embedding(session.window_for(boxes[0]))
    t2 = time.perf_counter()
    print(f"model + preprocessing: {t1 - t0:.2f} s; image embedding (once per image): "
          f"{t2 - t1:.3f} s")
    per_box, per_click, ious = [], [], []
    for _ in range(reps):
        session.set_labels(np.zeros_like(session.labels))
        for box, i in zip(boxes, ids):
            a = time.perf_counter()
            r = session.box_prompt(box)
            per_box.append(time.perf_counter() - a)
            if r.cell_id is None:
                continue
            true = label == i
            pred = session.labels == r.cell_id
            ious.append((pred & true).sum() / (pred | true).sum())
            ys, xs = np.nonzero(pred)
            a = time.perf_counter()  # a negative click at the mask's first pixel
            session.point_prompt([(xs[0], ys[0])], [0])
            per_click.append(time.perf_counter() - a)
    print(f"box prompt, cached embedding: {stats(per_box)}")
    print(f"negative click on the new cell: {stats(per_click)}")
    print(f"mask IoU with the true nucleus (box prompts): {np.mean(ious):.3f} over {len(ious)}")


def bench_segment_all(image: np.ndarray, label: np.ndarray, ckpt: str | None, reps: int) -> None:
    from cellsam.inference import CellSAMPredictor, InferenceSettings
    from cellsam.labelling import LabellingSession
    from cellsam.models.cellsam import build_cellsam

    n_cells = int(len(np.unique(label)) - 1)
    if ckpt:
        predictor = CellSAMPredictor.from_checkpoint(ckpt, device="cpu")
        what = f"checkpoint {ckpt}"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_cellsam(sam={"variant": "lite_medsam", "checkpoint": "packaged"},
                                  finder={"num_queries": max(3500, n_cells)})
        settings = InferenceSettings.from_preset(
            "paper", box_threshold=0.0, iou_threshold=-1e9, max_detections=n_cells)
        predictor = CellSAMPredictor(model, settings, device="cpu")
        what = f"LiteMedSAM + random CellFinder, {n_cells} boxes (the true cell count)"
    times, found = [], 0
    for _ in range(reps):
        session = LabellingSession(predictor, image)
        a = time.perf_counter()
        pred = session.segment_all()
        times.append(time.perf_counter() - a)
        found = pred.num_cells
    print(f"segment all ({what}): {stats(times)}; {found} cells")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dsb2018_fixed folder")
    ap.add_argument("--reps", type=int, default=3, help="passes over the image's boxes")
    ap.add_argument("--boxes", type=int, default=1000, help="at most this many boxes")
    ap.add_argument("--segment-reps", type=int, default=3)
    ap.add_argument("--ckpt", default=None, help="stage-2 checkpoint for Segment all")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name, image, label = load_image(args.data)
    print(f"image {name[:12]}... cropped to {image.shape}, {len(np.unique(label)) - 1} true "
          f"cells; torch threads {torch.get_num_threads()}")
    with torch.inference_mode():
        bench_prompts(image, label, args.reps, args.boxes)
        bench_segment_all(image, label, args.ckpt, args.segment_reps)


if __name__ == "__main__":
    main()
