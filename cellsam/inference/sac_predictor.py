"""`SACPredictor`: the Segment Any Cell pipeline behind `CellSAMPredictor`'s public surface.

    predictor = SACPredictor.from_checkpoint("sac.ckpt", device="cpu")
    result = predictor.predict(image)          # same `Prediction` as CellSAM's

Pipeline: the same preprocessing, tiling and label composition as `CellSAMPredictor`; per
model input: trunk (LoRA merged into the encoder when loaded from a checkpoint) -> the
prompter's foreground and centre maps -> `discriminate` (threshold, components, touching
nuclei split, positive / negative points) -> SAM decodes each component's points ->
predicted-IoU and mask thresholds -> the same post-processing (`postprocess_cells`). A
cell's `score` is its component's mean foreground probability and its `prompt_box` the
component's box. Point prompts are decoded by SAM's own decoder (`settings.decoder`
applies to box prompts only).

`predictor_from_checkpoint` opens either pipeline, as the checkpoint's stage says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from cellsam.inference.decode import LowRes, box_windows, grown_boxes, upsample_windows
from cellsam.inference.postprocess import Cell, postprocess_cells
from cellsam.inference.predictor import CellSAMPredictor
from cellsam.inference.settings import InferenceSettings
from cellsam.models.lora import merge_lora
from cellsam.models.sac import SAC

if TYPE_CHECKING:
    from cellsam.inference.point_prompts import CellPrompt, PointPromptSettings


def point_settings(settings: InferenceSettings) -> PointPromptSettings:
    """The prompt-discrimination part of the inference settings."""
    # Imported on use (as in `decode_point_cells`, `prompts`): opening a CellSAM checkpoint
    # through `predictor_from_checkpoint` needs none of the point-prompt code.
    from cellsam.inference.point_prompts import PointPromptSettings

    return PointPromptSettings(
        threshold=settings.prompt_threshold, min_area=settings.prompt_min_area,
        split=settings.prompt_split, selection=settings.prompt_selection,
        points_per_cell=settings.points_per_cell, negatives=settings.prompt_negatives,
        max_cells=settings.max_detections)


@torch.no_grad()
def decode_point_cells(model: SAC, embedding: Tensor, prompts: Sequence[CellPrompt],
                       image_hw: tuple[int, int], settings: InferenceSettings) -> list[Cell]:
    """Decode one image's point prompts into thresholded single-cell masks (not cleaned).

    embedding: `[1, P, h, w]`; prompts: in model-input pixels. Masks come at `image_hw`,
    each on a window around its component's box (`grown_boxes`, `settings.mask_margin`);
    cells come back in the order of `prompts`, without those under the IoU threshold.
    """
    from cellsam.inference.point_prompts import batch_prompts

    if not prompts:
        return []
    device = embedding.device
    points, labels = batch_prompts(list(prompts))
    points_t = torch.as_tensor(points, dtype=torch.float32, device=device)
    labels_t = torch.as_tensor(labels, dtype=torch.int64, device=device)
    s = float(model.image_size)
    H, W = image_hw
    scale = np.array([W / s, H / s, W / s, H / s], np.float32)
    boxes_img = torch.from_numpy(np.stack([p.box for p in prompts]).astype(np.float32) * scale)
    grid = (4 * embedding.shape[-2], 4 * embedding.shape[-1])
    thr_logit = settings.mask_logit_threshold
    keep_logits = settings.overlap == "argmax"
    cells: list[Cell] = []
    for start in range(0, len(prompts), settings.box_batch_size):
        stop = start + settings.box_batch_size
        low, iou = model.decode_points(embedding, points_t[start:stop], labels_t[start:stop])
        keep = torch.nonzero(iou >= settings.iou_threshold).flatten().cpu()
        if keep.numel() == 0:
            continue
        idx = keep + start
        own = grown_boxes(boxes_img[idx], image_hw, settings.mask_margin)
        win = box_windows(own, image_hw)
        lowres = LowRes(low[keep.to(device)], torch.zeros((keep.numel(), 2), dtype=torch.long),
                        grid)
        up = upsample_windows(lowres, win, image_hw).float().cpu().numpy()
        iou_np = iou.float().cpu().numpy()
        for j, k in enumerate(keep.tolist()):
            i = start + k
            y0, x0, y1, x1 = own[j].tolist()
            wy, wx = int(win[j, 0]), int(win[j, 1])
            crop = up[j, y0 - wy:y1 - wy, x0 - wx:x1 - wx]
            cells.append(Cell(y0=y0, x0=x0, mask=crop > thr_logit,
                              score=float(prompts[i].score), iou=float(iou_np[k]),
                              box=boxes_img[i].numpy(),
                              logits=crop if keep_logits else None))
    return cells


class SACPredictor(CellSAMPredictor):
    """Segments images with a trained SAC (see module doc); same methods and results as
    `CellSAMPredictor`, whose preprocessing, tiling and composition it inherits."""

    model: SAC

    def __init__(self, model: SAC, settings: InferenceSettings | None = None,
                 device: str | torch.device | None = "auto", bf16: bool = False) -> None:
        if not isinstance(model, SAC):
            raise TypeError(f"SACPredictor needs a SAC model, got {type(model).__name__}")
        super().__init__(model, settings, device, bf16)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = "auto",
                        preset: str | None = None, bf16: bool = False,
                        config: Mapping[str, Any] | None = None,
                        base_checkpoint: str | Path | None = None, merge: bool = True,
                        **overrides: Any) -> SACPredictor:
        """Load a `stage=sac` checkpoint (settings as `CellSAMPredictor.from_checkpoint`).

        `base_checkpoint`: where the base SAM weights are when not at the recorded path
        (their sha256 must match). `merge`: fold LoRA into the encoder (same outputs within
        float rounding, one matrix product less per attention layer).
        """
        from cellsam.utils.checkpoint import load_model

        model, meta = load_model(path, base_checkpoint=base_checkpoint)
        return cls.from_loaded(model, meta, path, device, preset, bf16, config, merge=merge,
                               **overrides)

    @classmethod
    def from_loaded(cls, model, meta: Mapping[str, Any], path: str | Path,
                    device: str | torch.device | None = "auto", preset: str | None = None,
                    bf16: bool = False, config: Mapping[str, Any] | None = None,
                    merge: bool = True, **overrides: Any) -> SACPredictor:
        """`from_checkpoint` on what `load_model(path)` returned (the file read once)."""
        cls.check_stage(meta, path)
        if merge and model.has_lora:
            merge_lora(model.sam.image_encoder)
        return super().from_loaded(model, meta, path, device, preset, bf16, config,
                                   **overrides)

    @staticmethod
    def check_stage(meta: Mapping[str, Any], path: str | Path) -> None:
        from cellsam.utils.checkpoint import CheckpointError

        if meta.get("stage") != "sac":
            raise CheckpointError(f"{path}: a {meta.get('stage')!r} checkpoint, not SAC "
                                  "(stage=sac); CellSAMPredictor opens CellSAM checkpoints")

    def prompts(self, foreground: np.ndarray, centre: np.ndarray | None) -> list[CellPrompt]:
        """Point prompts (model-input pixels) of one image's probability maps `[S, S]`."""
        from cellsam.inference.point_prompts import discriminate

        return discriminate(foreground, centre, point_settings(self.settings))

    def prompt_inputs(self, inputs: Tensor | None, features: Tensor | None = None
                      ) -> tuple[np.ndarray, np.ndarray, Tensor]:
        """What the prompt settings act on, for model inputs `[B, 3, S, S]` (in [0, 1]) or
        their trunk `features`: foreground and centre probabilities `[B, S, S]` and the
        image embeddings `[B, P, h, w]`. Computed once, they serve any number of settings
        (`cells_from_maps`); a prompter that reads images still needs `inputs`."""
        if features is None and inputs is None:
            raise ValueError("prompt_inputs needs model inputs or trunk features")
        with torch.inference_mode(), self.autocast():
            x = None if inputs is None else inputs.to(self.device)
            features = self.model.trunk(x) if features is None else features.to(self.device)
            maps = self.model.prompt_maps(x, features)
            embeddings = self.model.embed(features)
            fg = maps["foreground"][:, 0].float().sigmoid().cpu().numpy()
            centre = maps["centre"][:, 0].float().sigmoid().cpu().numpy()
        return fg, centre, embeddings

    def cells_from_maps(self, foreground: np.ndarray, centre: np.ndarray, embedding: Tensor,
                        hw: tuple[int, int]) -> list[Cell]:
        """One image's cells at output size `hw` from its maps `[S, S]` and embedding
        `[1, P, h, w]` (see `prompt_inputs`): cleaned, in prompt-score order, not composed."""
        with torch.inference_mode(), self.autocast():
            cells = decode_point_cells(self.model, embedding, self.prompts(foreground, centre),
                                       (int(hw[0]), int(hw[1])), self.settings)
        return postprocess_cells(cells, self.settings)

    def segment_inputs(self, inputs: Tensor | None, sizes: Sequence[tuple[int, int]],
                       features: Tensor | None = None) -> list[list[Cell]]:
        """Cells of model inputs `[B, 3, S, S]` (in [0, 1]) at output sizes `(H, W)` each,
        cleaned, in prompt-score order, not composed. `features` (the trunk's map) skip the
        trunk; a prompter that reads images still needs `inputs`."""
        fg, centre, embeddings = self.prompt_inputs(inputs, features)
        return [self.cells_from_maps(fg[i], centre[i], embeddings[i:i + 1], hw)
                for i, hw in enumerate(sizes)]


def predictor_from_checkpoint(path: str | Path, device: str | torch.device | None = "auto",
                              bf16: bool = False, config: Mapping[str, Any] | None = None,
                              base_checkpoint: str | Path | None = None,
                              **kwargs: Any) -> CellSAMPredictor:
    """`SACPredictor` for a `stage=sac` checkpoint, else `CellSAMPredictor` (which refuses
    what is not a stage-2 checkpoint). `base_checkpoint`: as `SACPredictor.from_checkpoint`."""
    from cellsam.utils.checkpoint import load_model

    model, meta = load_model(path, base_checkpoint=base_checkpoint)
    cls = SACPredictor if meta.get("stage") == "sac" else CellSAMPredictor
    return cls.from_loaded(model, meta, path, device=device, bf16=bf16, config=config, **kwargs)


__all__ = ["SACPredictor", "decode_point_cells", "point_settings", "predictor_from_checkpoint"]
