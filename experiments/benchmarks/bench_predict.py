"""End-to-end prediction speed: images per second for 512x512 images with ~100 and ~1000 cells.

Runs `CellSAMPredictor.predict` (preprocessing with CLAHE, ViT, CellFinder, decoding,
post-processing, label composition) on synthetic images and prints images/s with a
breakdown of where the time goes. A random model finds no real cells, so the number of box
prompts is fixed instead: every image gets exactly `cells` boxes (box threshold 0 and
`max_detections = cells`) and every mask is kept (no IoU threshold), the decoding and
post-processing work a trained model would do on that image.

    python experiments/benchmarks/bench_predict.py                         # paper-size model
    python experiments/benchmarks/bench_predict.py --variant tiny --images 3
    python experiments/benchmarks/bench_predict.py --decoders fast standard
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch

from cellsam.data.synthetic import generate_sample
from cellsam.inference import CellSAMPredictor, InferenceSettings
from cellsam.inference.predictor import cells_to_prediction
from cellsam.models.cellsam import build_cellsam

# Archetypes whose cells are small enough for ~1000 to fit in 512 x 512.
SCENES = {100: "culture", 1000: "bacteria"}


def build_model(variant: str, queries: int):
    if variant == "paper":
        return build_cellsam(sam={"variant": "vit_b", "checkpoint": None},
                             finder={"num_queries": max(queries, 3500)})
    return build_cellsam(sam={"variant": "tiny", "checkpoint": None},
                         finder={"hidden_dim": 64, "ffn_dim": 128, "num_heads": 4,
                                 "num_encoder_layers": 2, "num_decoder_layers": 3,
                                 "num_queries": queries})


def run(predictor: CellSAMPredictor, images: list[np.ndarray]) -> dict[str, float]:
    """Seconds per image in total and per stage (mean over images, after one warm-up)."""
    predictor.predict(images[0])  # warm-up (allocator, first-call overheads)
    totals = {"prepare": 0.0, "model+decode": 0.0, "compose": 0.0, "total": 0.0}
    cells = 0
    for img in images:
        t0 = time.perf_counter()
        prepared = predictor.prepare(img)
        t1 = time.perf_counter()
        found = predictor.segment_prepared([prepared])[0]
        t2 = time.perf_counter()
        result = cells_to_prediction(found, prepared.shape[-2:], predictor.settings.overlap)
        t3 = time.perf_counter()
        totals["prepare"] += t1 - t0
        totals["model+decode"] += t2 - t1
        totals["compose"] += t3 - t2
        totals["total"] += t3 - t0
        cells += result.num_cells
    out = {k: v / len(images) for k, v in totals.items()}
    out["cells"] = cells / len(images)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=["paper", "tiny"], default="paper")
    ap.add_argument("--cells", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--images", type=int, default=2, help="timed images per setting")
    ap.add_argument("--decoders", nargs="+", default=["fast"], choices=["fast", "standard"])
    ap.add_argument("--batch", type=int, default=64, help="boxes per decoder call")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", 2)))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = build_model(args.variant, max(args.cells))
    print(f"model: random {args.variant} (input {model.image_size} px), device {args.device}, "
          f"{args.threads} threads, load avg {os.getloadavg()[0]:.1f}")
    for n in args.cells:
        archetype = SCENES.get(n, "culture")
        images = [generate_sample(archetype, n, seed=s)[0] for s in range(args.images + 1)]
        for decoder in args.decoders:
            settings = InferenceSettings.from_preset(
                # a random decoder predicts any IoU (often < 0): keep every mask
                "paper", box_threshold=0.0, iou_threshold=-1e9, max_detections=n,
                min_area=0, decoder=decoder, box_batch_size=args.batch)
            predictor = CellSAMPredictor(model, settings, device=args.device)
            r = run(predictor, images)
            print(f"~{n} cells ({archetype}), decoder {decoder}: {1 / r['total']:.3f} images/s "
                  f"({r['total']:.2f} s/image: prepare {r['prepare']:.2f}, model+decode "
                  f"{r['model+decode']:.2f}, compose {r['compose']:.2f}; "
                  f"{r['cells']:.0f} labelled cells/image)", flush=True)


if __name__ == "__main__":
    main()
