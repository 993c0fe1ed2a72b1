"""Inference without Lightning or Hydra: `CellSAMPredictor` and its building blocks.

- `predictor`: `CellSAMPredictor` (image -> labels, scores, boxes), `Prediction`.
- `postprocess`: `InferenceSettings` (presets `paper`, `release`), score threshold, mask
  clean-up, label composition.
- `decode`: batched box decoding (standard and fast) and windowed mask upsampling.
- `tiled`: tiling of large images and merging of cells across tile seams.
"""

from cellsam.inference.postprocess import PRESETS, InferenceSettings
from cellsam.inference.predictor import CellSAMPredictor, EmptyImageWarning, Prediction

__all__ = ["PRESETS", "CellSAMPredictor", "EmptyImageWarning", "InferenceSettings", "Prediction"]
