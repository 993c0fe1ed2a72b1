"""`CellSAMPredictor`: one image of any size in, a label image and per-cell tables out.

No Lightning or Hydra here, so it works from a notebook::

    predictor = CellSAMPredictor.from_checkpoint("stage2.ckpt", device="cuda")
    result = predictor.predict(image, channels={"nuclear": 0, "whole_cell": 1})
    result.labels, result.scores, result.boxes

Pipeline (REFERENCE sections 1, 3, 4): channel placement -> percentile clip (+ CLAHE) ->
resize to the model input `S x S` (aspect ratio not kept, as the released code) -> ViT
trunk -> CellFinder boxes -> box-score threshold (optionally k-means adjusted) -> SAM
decoding of the boxes in batches -> predicted-IoU and mask thresholds -> hole filling,
island removal, minimum area -> one label image by the configured overlap rule. Images
whose larger side exceeds `tile_limit` are tiled (see `cellsam.inference.tiled`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cellsam.inference.decode import decode_cells
from cellsam.inference.postprocess import (
    Cell,
    compose_labels,
    postprocess_cells,
    score_threshold,
)
from cellsam.inference.settings import InferenceSettings, resolve_settings
from cellsam.inference.tiled import segment_tiled, tile_windows
from cellsam.models.cellsam import CellSAM
from cellsam.ops.boxes import box_cxcywh_to_xyxy
from cellsam.ops.masks import label_boxes_xyxy
from cellsam.preprocess import normalize_channels, place_channels


class EmptyImageWarning(UserWarning):
    """The image holds no signal (all zeros or constant): the labels are empty."""


@dataclass
class Prediction:
    """One image's result; row `k` of every table is the cell labelled `k + 1`.

    labels: `[H, W]` uint16 (uint32 above 65535 cells); scores: `[N]` CellFinder box scores;
    iou: `[N]` SAM's predicted IoU; boxes: `[N, 4]` xyxy pixels of each labelled cell (x1,
    y1 exclusive); prompt_boxes: `[N, 4]` xyxy pixels of the box prompts.
    """

    labels: np.ndarray
    scores: np.ndarray
    iou: np.ndarray
    boxes: np.ndarray
    prompt_boxes: np.ndarray

    @property
    def num_cells(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> Prediction:
        z = np.zeros((0,), np.float32)
        return cls(np.zeros(shape, np.uint16), z, z.copy(), np.zeros((0, 4), np.float32),
                   np.zeros((0, 4), np.float32))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`auto`/None: CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cells_to_prediction(cells: list[Cell], shape: tuple[int, int], rule: str) -> Prediction:
    """Compose cells into a `Prediction` (see `compose_labels` for the overlap rules)."""
    if not cells:
        return Prediction.empty(shape)
    labels, kept = compose_labels(cells, shape, rule)
    boxes, _ = label_boxes_xyxy(labels)  # ids 1..N all present, so rows follow ids
    return Prediction(
        labels=labels,
        scores=np.array([cells[k].score for k in kept], np.float32),
        iou=np.array([cells[k].iou for k in kept], np.float32),
        boxes=boxes.astype(np.float32),
        prompt_boxes=np.stack([cells[k].box for k in kept]).astype(np.float32),
    )


class CellSAMPredictor:
    """Segments images with a trained CellSAM (see module doc).

    `settings` (an `InferenceSettings`) holds every threshold and switch; `bf16` runs the
    model under bfloat16 autocast on CUDA (ignored on CPU).
    """

    def __init__(self, model: CellSAM, settings: InferenceSettings | None = None,
                 device: str | torch.device | None = "auto", bf16: bool = False) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.settings = settings or InferenceSettings()
        self.bf16 = bf16
        self.checkpoint_meta: dict[str, Any] = {}  # set by `from_checkpoint`

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = "auto",
                        preset: str | None = None, bf16: bool = False,
                        config: Mapping[str, Any] | None = None, **overrides: Any
                        ) -> CellSAMPredictor:
        """Load a stage-2 checkpoint. Settings: `resolve_settings` of the checkpoint's
        `meta["inference"]`, the run's `config` block, keyword `overrides` (e.g.
        `box_threshold=0.3`) and `preset`. A stage-1 checkpoint is refused: its SAM neck
        never trained, so it would segment nothing useful."""
        from cellsam.utils.checkpoint import load_model

        model, meta = load_model(path)
        return cls.from_loaded(model, meta, path, device, preset, bf16, config, **overrides)

    @classmethod
    def from_loaded(cls, model, meta: Mapping[str, Any], path: str | Path,
                    device: str | torch.device | None = "auto", preset: str | None = None,
                    bf16: bool = False, config: Mapping[str, Any] | None = None,
                    **overrides: Any) -> CellSAMPredictor:
        """`from_checkpoint` on what `load_model(path)` returned (the file read once)."""
        cls.check_stage(meta, path)
        settings = resolve_settings(meta.get("inference"), config, overrides, preset)
        predictor = cls(model, settings, device=device, bf16=bf16)
        predictor.checkpoint_meta = dict(meta)
        return predictor

    @staticmethod
    def check_stage(meta: Mapping[str, Any], path: str | Path) -> None:
        """Refuse a checkpoint this pipeline cannot predict with."""
        from cellsam.utils.checkpoint import CheckpointError

        if meta.get("stage") != "sam":
            raise CheckpointError(
                f"{path}: a stage-{'1' if meta.get('stage') == 'finder' else '?'} "
                f"({meta.get('stage')!r}) checkpoint; prediction needs a stage-2 checkpoint "
                "(train stage=sam finder_ckpt=<this file> first)")

    def configure(self, **overrides: Any) -> CellSAMPredictor:
        """A predictor of the same kind sharing this model with some settings changed."""
        return type(self)(self.model, replace(self.settings, **overrides), self.device,
                          self.bf16)

    # -- preprocessing ----------------------------------------------------------------------
    def prepare(self, image: np.ndarray, channels: Mapping[str, Any] | None = None,
                channel_axis: int | None = None) -> np.ndarray:
        """Any image -> the model's channels `[3, H, W]` float32 in [0, 1].

        image: `[H, W]`, `[H, W, C]` or `[C, H, W]`, any real dtype; `channels` maps
        `nuclear` / `whole_cell` to channel indices (default: 1 channel -> whole-cell, more
        -> their mean). Raises `ValueError` for NaN/inf, empty arrays and other shapes.
        """
        s = self.settings
        placed = place_channels(np.asarray(image), channels, channel_axis)
        return normalize_channels(placed, s.percentile, s.clahe, s.clahe_kernel)

    def to_input(self, images: Sequence[np.ndarray]) -> Tensor:
        """Prepared images `[3, h, w]` -> model input `[B, 3, S, S]` (bilinear, antialiased,
        as the data module resizes training images)."""
        size = (self.model.image_size,) * 2
        out = []
        for im in images:
            t = torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32))[None].to(self.device)
            if tuple(t.shape[-2:]) != size:
                t = F.interpolate(t, size=size, mode="bilinear", antialias=True).clamp(0, 1)
            out.append(t)
        return torch.cat(out)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision every model call of this predictor runs under (bf16 on CUDA if set)."""
        if self.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- the model ----------------------------------------------------------------------------
    def detections(self, out: dict[str, Tensor], i: int) -> tuple[Tensor, Tensor]:
        """Boxes `[K, 4]` (xyxy input pixels) and scores `[K]` over the threshold, by score."""
        s = self.settings
        scores = out["pred_logits"][i, :, 0].float().sigmoid()
        thr = score_threshold(scores.cpu().numpy(), s)
        keep = torch.nonzero(scores > thr).flatten()
        keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]
        if s.max_detections is not None:
            keep = keep[: s.max_detections]
        size = float(self.model.image_size)
        boxes = (box_cxcywh_to_xyxy(out["pred_boxes"][i, keep].float()) * size).clamp(0, size)
        return boxes, scores[keep]

    def segment_inputs(self, inputs: Tensor | None, sizes: Sequence[tuple[int, int]],
                       features: Tensor | None = None) -> list[list[Cell]]:
        """Cells of model inputs `[B, 3, S, S]` (in [0, 1]) at output sizes `(H, W)` each;
        with `features` (the trunk's `[B, C, h, w]`, e.g. from a feature cache) the trunk is
        skipped and `inputs` may be None (shared trunk only).

        Cells are cleaned (holes, islands, min area) and in box-score order, not composed.
        """
        if features is None and inputs is None:
            raise ValueError("segment_inputs needs model inputs or trunk features")
        if features is not None and self.model.finder_encoder is not None:
            raise ValueError("trunk features alone cannot drive a model with a separate "
                             "detection trunk (shared_trunk: false); pass the images")
        with torch.inference_mode(), self.autocast():
            if features is None:
                features = self.model.trunk(inputs.to(self.device))
                out = self.model.detect(inputs.to(self.device), features)
            else:
                features = features.to(self.device)
                out = self.model.finder(features)
            embeddings = self.model.embed(features)
            result = []
            for i, hw in enumerate(sizes):
                boxes, scores = self.detections(out, i)
                cells = decode_cells(self.model, embeddings[i:i + 1], boxes, scores.cpu(),
                                     (int(hw[0]), int(hw[1])), self.settings)
                result.append(postprocess_cells(cells, self.settings))
        return result

    def segment_prepared(self, images: list[np.ndarray]) -> list[list[Cell]]:
        """Cells of prepared images `[3, h, w]` (see `segment_inputs`), untiled."""
        return self.segment_inputs(self.to_input(images), [im.shape[-2:] for im in images])

    def use_tiling(self, shape: tuple[int, int]) -> bool:
        mode = self.settings.tiling
        return mode == "always" or (mode == "auto" and max(shape) > self.settings.tile_limit)

    # -- public entry points -------------------------------------------------------------------
    def predict(self, image: np.ndarray, channels: Mapping[str, Any] | None = None,
                channel_axis: int | None = None, tiling: bool | None = None) -> Prediction:
        """Segment one image (see `prepare` for what it accepts).

        `tiling` forces tiling on or off (None: `settings.tiling`). An image without signal
        (all zeros or constant) gives empty labels and an `EmptyImageWarning`.
        """
        return self.predict_prepared(self.prepare(image, channels, channel_axis), tiling)

    def predict_prepared(self, prepared: np.ndarray, tiling: bool | None = None,
                         progress: Callable[[int, int], None] | None = None) -> Prediction:
        """`predict` for an image already through `prepare` (`[3, H, W]` in [0, 1]).

        `progress(tiles done, tiles in all)` is called after each batch of tiles (tiled
        images only); an exception it raises stops the prediction (a GUI's cancel).
        """
        shape = prepared.shape[-2:]
        if not prepared.any():
            warnings.warn(f"image of shape {tuple(shape)} has no signal (all zeros or constant):"
                          " returning empty labels", EmptyImageWarning, stacklevel=3)
            return Prediction.empty(shape)
        s = self.settings
        if tiling if tiling is not None else self.use_tiling(shape):
            segment = self.segment_prepared
            if progress is not None:
                total = len(tile_windows(shape[0], shape[1], s.tile_size, s.tile_overlap))
                done = [0]

                def segment(crops: list[np.ndarray]) -> list[list[Cell]]:
                    out = self.segment_prepared(crops)
                    done[0] += len(crops)
                    progress(done[0], total)
                    return out

            cells = segment_tiled(prepared, segment, s.tile_size, s.tile_overlap,
                                  s.tile_batch_size)
            cells.sort(key=lambda c: -c.score)  # ids by decreasing score, as untiled (stable)
        else:
            cells = self.segment_prepared([prepared])[0]
        return cells_to_prediction(cells, shape, s.overlap)

    def predict_batch(self, inputs: Tensor | None, size: tuple[int, int] | None = None,
                      features: Tensor | None = None) -> list[Prediction]:
        """Segment already prepared model inputs `[B, 3, S, S]` in [0, 1] (e.g. a data
        module's batch), or their trunk `features` (see `segment_inputs`); labels come at
        `size` `(H, W)` (default `S x S`)."""
        hw = size or (self.model.image_size,) * 2
        n = (inputs if features is None else features).shape[0]
        cells = self.segment_inputs(inputs, [hw] * n, features)
        return [cells_to_prediction(c, hw, self.settings.overlap) for c in cells]

    def predict_many(self, images: Sequence[np.ndarray], batch_size: int = 4,
                     channels: Mapping[str, Any] | None = None) -> Iterator[Prediction]:
        """Predict a list of images; untiled ones go through the model `batch_size` at a time."""
        pending: list[tuple[int, np.ndarray]] = []
        done: dict[int, Prediction] = {}
        nxt = 0
        for i, image in enumerate(images):
            prepared = self.prepare(image, channels)
            if not prepared.any() or self.use_tiling(prepared.shape[-2:]):
                done[i] = self.predict_prepared(prepared)
            else:
                pending.append((i, prepared))
            if pending and (len(pending) == batch_size or i == len(images) - 1):
                for (j, p), cells in zip(pending, self.segment_prepared([p for _, p in pending])):
                    done[j] = cells_to_prediction(cells, p.shape[-2:], self.settings.overlap)
                pending = []
            while nxt in done:
                yield done.pop(nxt)
                nxt += 1


__all__ = ["CellSAMPredictor", "EmptyImageWarning", "Prediction", "cells_to_prediction",
           "resolve_device"]
