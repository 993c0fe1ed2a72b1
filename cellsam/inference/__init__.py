"""Inference without Lightning or Hydra: `CellSAMPredictor` and its building blocks.

- `predictor`: `CellSAMPredictor` (image -> labels, scores, boxes), `Prediction`.
- `settings`: `InferenceSettings` (presets `paper`, `release`) and `resolve_settings`, the
  one rule that combines preset, checkpoint, config and explicit settings.
- `postprocess`: score threshold, mask clean-up, label composition.
- `decode`: batched box decoding (standard and fast) and windowed mask upsampling.
- `tiled`: tiling of large images and merging of cells across tile seams.
"""

from cellsam.inference.predictor import CellSAMPredictor, EmptyImageWarning, Prediction
from cellsam.inference.settings import PRESETS, InferenceSettings, resolve_settings

__all__ = ["PRESETS", "CellSAMPredictor", "EmptyImageWarning", "InferenceSettings", "Prediction",
           "resolve_settings"]
