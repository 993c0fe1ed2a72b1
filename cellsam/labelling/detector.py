"""Prompt-only models: pretrained SAM weights (default: the LiteMedSAM weights packaged with
cellsam's dependencies) without a trained CellFinder, for box and point prompts only.

A `CellSAM` needs a detector module; a prompt-only one holds `NoDetector`, which raises
`NoDetectorError` when anything asks it for boxes (the predictor's `predict`, a session's
`segment_all`), rather than a random CellFinder that would propose noise.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import Tensor, nn

from cellsam.inference.predictor import CellSAMPredictor
from cellsam.inference.settings import InferenceSettings
from cellsam.models.cellsam import CellSAM
from cellsam.models.sam import build_sam


class NoDetectorError(RuntimeError):
    """The model has no trained detector, so it cannot find cells by itself."""


class NoDetector(nn.Module):
    """Stands in for CellFinder in a prompt-only `CellSAM`; calling it raises."""

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        raise NoDetectorError("this model is prompt-only (pretrained SAM weights, no trained "
                              "CellFinder): it segments box and point prompts; to find every "
                              "cell, load a stage-2 checkpoint")


def has_detector(model: nn.Module) -> bool:
    """Whether the model finds cells by itself: a CellSAM with a trained CellFinder, or a
    SAC (its prompter proposes the cells)."""
    return not isinstance(getattr(model, "finder", None), NoDetector)


def prompt_only_model(variant: str = "lite_medsam", checkpoint: str | None = "packaged"
                      ) -> CellSAM:
    """SAM of `variant` with weights from `checkpoint` (`packaged`: the installed package's
    file, sha256-checked; or a path any `cellsam.models.checkpoints` reader takes) and no
    detector. `checkpoint=None` (random weights, for tests) warns as `build_sam` does."""
    sam = build_sam(variant=variant, checkpoint=checkpoint)
    return CellSAM(sam, NoDetector(), shared_trunk=True)


def prompt_only_predictor(variant: str = "lite_medsam", checkpoint: str | None = "packaged",
                          device: Any = "auto", settings: InferenceSettings | None = None,
                          **overrides: Any) -> CellSAMPredictor:
    """A `CellSAMPredictor` on `prompt_only_model`; `overrides` change `settings` (default
    the paper preset), e.g. `mask_threshold=0.4`."""
    base = replace(settings or InferenceSettings(), **overrides)
    return CellSAMPredictor(prompt_only_model(variant, checkpoint), base, device=device)


__all__ = ["NoDetector", "NoDetectorError", "has_detector", "prompt_only_model",
           "prompt_only_predictor"]
