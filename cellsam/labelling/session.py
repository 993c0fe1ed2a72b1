"""`LabellingSession`: one image being labelled by a person with CellSAM's help.

The loop (the CellSAM paper's human-in-the-loop labelling)::

    session = LabellingSession.from_checkpoint("stage2.ckpt", image)   # or .prompt_only(image)
    session.segment_all(progress=lambda done, total: ...)  # every cell the model finds
    session.box_prompt((x0, y0, x1, y1))                    # a missed cell: a new id
    session.point_prompt([(x, y)], [0])                     # refine it: a negative click
    session.delete(7); session.merge([3, 4]); session.renumber()
    session.save("out", "image_01")                         # image_01.tif / .csv as predict.py
    session.add_to_training_set("data/my_corrections")      # train stage=sam on them later

`session.labels` `[H, W]` int32 is the current label image (a viewer shows it; after the
person paints on it, `set_labels` hands it back). Image embeddings are computed once per
window and cached (see `prompts.choose_window`): the whole image when the predictor would
segment it untiled, else the predictor's tiles. Not thread-safe: run one call at a time
(a GUI runs `segment_all` in a worker thread and waits for it before prompting).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cellsam.inference.postprocess import Cell
from cellsam.inference.predictor import (
    CellSAMPredictor,
    Prediction,
    cells_to_prediction,
)
from cellsam.labelling import edits
from cellsam.labelling.cell_labels import CellLabels
from cellsam.labelling.detector import NoDetectorError, has_detector, prompt_only_predictor
from cellsam.labelling.export import CellInfo, save_labels
from cellsam.labelling.prompts import (
    PromptResult,
    PromptState,
    Window,
    box_to_model,
    check_box,
    choose_window,
    choose_window_for_points,
    decode_box_fast,
    decode_prompt,
    grow,
    inside,
    points_box,
    points_to_model,
    prompt_mask,
    union_box,
    window_logits,
)

Progress = Callable[[int, int], None]  # (tiles done, tiles in all)


class LabellingSession(CellLabels):
    """Labels of one image, proposed by a `CellSAMPredictor` (or a `SACPredictor`) and
    corrected by prompts and edits (see module doc; the edits and tables are `CellLabels`').

    image: what the person opened, any layout `CellSAMPredictor.prepare` takes (with
    `channels` / `channel_axis`); its bytes identify it in a training set. labels: a
    starting label image `[H, W]` (default empty). `overwrite`: a prompted mask takes
    pixels from the cells it covers (else it fills background only). `max_windows`:
    embeddings kept (each `P x S/16 x S/16` floats; 4 MB for LiteMedSAM and ViT-B).
    """

    def __init__(self, predictor: CellSAMPredictor, image: np.ndarray,
                 channels: Mapping[str, Any] | None = None, channel_axis: int | None = None,
                 labels: np.ndarray | None = None, overwrite: bool = True,
                 max_windows: int = 8) -> None:
        self.predictor = predictor
        self.image = np.asarray(image)
        self.channels, self.channel_axis = channels, channel_axis
        self.prepared = predictor.prepare(self.image, channels, channel_axis)  # [3, H, W]
        self.overwrite = overwrite
        self.max_windows = max(1, int(max_windows))
        self._embeddings: OrderedDict[Window, Tensor] = OrderedDict()
        super().__init__(self.prepared.shape[-2:], labels)  # sets shape, labels, cells

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, image: np.ndarray, device: str | None = "auto",
                        channels: Mapping[str, Any] | None = None, **overrides: Any
                        ) -> LabellingSession:
        """A session on a CellSAM stage-2 or a SAC checkpoint (`predictor_from_checkpoint`:
        the checkpoint's stage picks the pipeline; keyword `overrides` set inference
        settings, e.g. `box_threshold=0.3` or SAC's `prompt_threshold=0.6`)."""
        from cellsam.inference.sac_predictor import predictor_from_checkpoint

        return cls(predictor_from_checkpoint(path, device=device, **overrides), image, channels)

    @classmethod
    def prompt_only(cls, image: np.ndarray, variant: str = "lite_medsam",
                    checkpoint: str = "packaged", device: str | None = "auto",
                    channels: Mapping[str, Any] | None = None, **overrides: Any
                    ) -> LabellingSession:
        """A session on pretrained SAM weights without a detector (default: the packaged
        LiteMedSAM): box and point prompts work, `segment_all` raises `NoDetectorError`."""
        return cls(prompt_only_predictor(variant, checkpoint, device, **overrides), image,
                   channels)

    def configure(self, **overrides: Any) -> None:
        """Change inference settings, e.g. the thresholds a GUI shows (see
        `CellSAMPredictor.configure`); labels and cells stay. Preprocessing settings
        re-prepare the image and drop the cached embeddings."""
        before = self.predictor.settings
        self.predictor = self.predictor.configure(**overrides)
        if any(getattr(before, k) != getattr(self.predictor.settings, k)
               for k in ("percentile", "clahe", "clahe_kernel")):
            self.prepared = self.predictor.prepare(self.image, self.channels, self.channel_axis)
            self._embeddings.clear()

    @property
    def model(self):
        return self.predictor.model

    @property
    def has_detector(self) -> bool:
        return has_detector(self.model)

    @property
    def whole_image_embedding(self) -> bool:
        """True when one embedding of the whole image serves every prompt (the predictor
        would segment it untiled); else embeddings are per tile window."""
        return not self.predictor.use_tiling(self.shape)

    # -- embeddings ---------------------------------------------------------------------------
    def embedding(self, window: Window) -> Tensor:
        """The image embedding `[1, P, h, w]` of `window`, computed once and cached."""
        if window in self._embeddings:
            self._embeddings.move_to_end(window)
            return self._embeddings[window]
        y0, x0, y1, x1 = window
        # the predictor's own resize to the model input, so prompts see what segment_all sees
        inputs = self.predictor.to_input([self.prepared[:, y0:y1, x0:x1]])
        with torch.inference_mode(), self.predictor.autocast():
            emb = self.model.embed(self.model.trunk(inputs))
        self._remember(window, emb)
        return emb

    def _remember(self, window: Window, emb: Tensor) -> None:
        self._embeddings[window] = emb
        self._embeddings.move_to_end(window)
        while len(self._embeddings) > self.max_windows:
            self._embeddings.popitem(last=False)

    def window_for(self, box_xyxy) -> Window:
        """The window whose embedding a prompt around this box uses."""
        box = check_box(box_xyxy, self.shape)
        return choose_window(box, self.shape, self.predictor.settings,
                             self.whole_image_embedding)

    # -- segment all -------------------------------------------------------------------------
    def segment_all(self, progress: Progress | None = None) -> Prediction:
        """Every cell the model finds; replaces `labels` (ids 1..N by decreasing score) and
        the per-cell table, and returns the prediction (`labels`, `scores`, `iou`, ...).

        Large images are tiled as the predictor tiles them; `progress(done, total)` is
        called after each batch of tiles (once for an untiled image). An exception raised
        by `progress` (a GUI's cancel) stops the run with the session unchanged.
        """
        if not self.has_detector:
            raise NoDetectorError("segment_all needs a CellSAM checkpoint with a trained "
                                  "detector (CellFinder) or a SAC checkpoint; this session "
                                  "is prompt-only: use box_prompt / point_prompt")
        p = self.predictor
        if p.use_tiling(self.shape) or not self.prepared.any():
            pred = p.predict_prepared(self.prepared, progress=progress)
        else:  # untiled: one batch; its trunk pass also seeds the prompts' embedding
            if progress is not None:
                progress(0, 1)
            pred = cells_to_prediction(self._segment_whole(), self.shape, p.settings.overlap)
            if progress is not None:
                progress(1, 1)
        self.labels = pred.labels.astype(np.int32)
        self.cells = {k + 1: CellInfo(float(pred.scores[k]), float(pred.iou[k]),
                                      pred.prompt_boxes[k].astype(np.float64), "segment_all")
                      for k in range(pred.num_cells)}
        self._prompts.clear()
        self.selected = None
        return pred

    def _segment_whole(self) -> list[Cell]:
        """Untiled cells; with a shared trunk its features also give the cached embedding,
        so the prompts after `segment_all` start without another encoder pass. (A SAC
        prompter that reads the image takes `inputs`; CellSAM's shared trunk ignores them.)"""
        p = self.predictor
        if getattr(self.model, "finder_encoder", None) is not None:
            return p.segment_prepared([self.prepared])
        inputs = p.to_input([self.prepared])
        with torch.inference_mode(), p.autocast():
            features = self.model.trunk(inputs)
            self._remember((0, 0, *self.shape), self.model.embed(features))
        return p.segment_inputs(inputs, [self.shape], features=features)[0]

    # -- prompts -------------------------------------------------------------------------------
    def box_prompt(self, box_xyxy, cell_id: int | None = None) -> PromptResult:
        """Segment the cell in `box_xyxy` (x0, y0, x1, y1 image pixel edges) as a new cell,
        or as `cell_id` (its old pixels are replaced). The new cell becomes `selected`."""
        box = check_box(box_xyxy, self.shape)
        window = self.window_for(box)
        emb = self.embedding(window)
        settings = self.predictor.settings
        with torch.inference_mode(), self.predictor.autocast():
            if settings.decoder == "fast" and settings.mask_margin is not None:
                up, region, logits, iou = decode_box_fast(self.model, emb, box, window,
                                                          settings.mask_margin)
                origin = region[:2]
            else:
                logits, iou = decode_prompt(self.model, emb,
                                            box=box_to_model(box, window, self.model.image_size))
                up, origin = window_logits(logits, window), window[:2]
                region = grow(box, self.shape, settings.mask_margin)
        state = PromptState(window, box, logits=logits)
        return self._commit(up, origin, iou, state, region, cell_id, "box")

    def point_prompt(self, points, labels, cell_id: int | None = None,
                     keep_previous: bool = True) -> PromptResult:
        """Refine a cell with clicks: `points` `[N, 2]` (x, y image pixel centres), `labels`
        `[N]` 1 (positive: part of the cell) or 0 (negative: not part of it).

        The cell is `cell_id`, else `selected`; with neither, the clicks make a new cell.
        SAM sees the cell's prompt box (for a cell not prompted in this session: the box
        around its current pixels), every click on it so far (`keep_previous`) and its last
        low-res mask, as SAM's interactive loop does.
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        lab = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(pts) == 0 or len(pts) != len(lab):
            raise ValueError(f"give one label per point, at least one point; got {len(pts)} "
                             f"points and {len(lab)} labels")
        if not set(lab.tolist()) <= {0, 1} or not np.isfinite(pts).all():
            raise ValueError("point labels are 1 (positive) or 0 (negative), points finite")
        if not inside(pts, (0, 0, *self.shape)):
            raise ValueError(f"points outside the {self.shape[0]} x {self.shape[1]} image")
        target = cell_id if cell_id is not None else self.selected
        state = self._state_for(target) if target is not None else None
        whole = self.whole_image_embedding
        settings = self.predictor.settings
        if state is None:
            window = choose_window_for_points(pts, None, self.shape, settings, whole)
            state = PromptState(window, None)
        if keep_previous:
            pts, lab = np.concatenate([state.points, pts]), np.concatenate([state.labels, lab])
        box, window, previous = state.box, state.window, state.logits
        if not inside(pts, window):  # a click beyond the cell's window: a larger one
            window = choose_window_for_points(pts, box, self.shape, settings, whole)
            previous = None  # those logits belong to the other window's embedding
        emb = self.embedding(window)
        size = self.model.image_size
        single_click = box is None and previous is None and len(pts) == 1
        with torch.inference_mode(), self.predictor.autocast():
            logits, iou = decode_prompt(
                self.model, emb, box=None if box is None else box_to_model(box, window, size),
                points=points_to_model(pts, window, size), labels=lab, mask_logits=previous,
                multimask=single_click)
        region = None
        if box is not None:
            pos = pts[lab == 1]
            reach = union_box(box, points_box(pos) if len(pos) else None)
            region = grow(reach, self.shape, settings.mask_margin)
        new = PromptState(window, box, pts, lab, logits)
        return self._commit(window_logits(logits, window), window[:2], iou, new, region, target,
                            "points", pts[lab == 1], pts[lab == 0])

    def _state_for(self, cell_id: int) -> PromptState:
        """A cell's prompt state; for a cell not prompted in this session, one made from
        the box around its pixels. Raises `KeyError` when the cell is not in the labels."""
        if cell_id in self._prompts:
            return self._prompts[cell_id]
        ys, xs = np.nonzero(self.labels == cell_id)
        if ys.size == 0:
            raise KeyError(f"cell {cell_id} is not in the labels")
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
        return PromptState(self.window_for(box), box)

    def _commit(self, logits: np.ndarray, at: tuple[int, int], iou: float, state: PromptState,
                region: Window | None, cell_id: int | None, origin: str,
                positives: np.ndarray | None = None, negatives: np.ndarray | None = None
                ) -> PromptResult:
        """Paint the cell that `logits` `[h, w]` (image pixels from `at` = (y0, x0)) give."""
        found = prompt_mask(logits, at[0], at[1], self.predictor.settings, region, positives,
                            negatives)
        if found is None:
            return PromptResult(None, 0, 0, np.zeros((0, 0), bool), iou, state.window)
        y0, x0, mask = found
        new_id = int(cell_id) if cell_id is not None else edits.next_id(self.labels)
        before = set(edits.cell_areas(self.labels[y0:y0 + mask.shape[0],
                                                  x0:x0 + mask.shape[1]]))
        self.labels = edits.paint_cell(self.labels, mask, y0, x0, new_id, self.overwrite)
        after = set(edits.cell_areas(self.labels))
        removed = tuple(sorted(i for i in before - after if i != new_id))
        self._forget(removed)
        old = self.cells.get(new_id)
        keep_score = old.score if old is not None and cell_id is not None else math.nan
        self.cells[new_id] = CellInfo(keep_score, iou, state.box, origin)
        self._prompts[new_id] = state
        self.selected = new_id
        return PromptResult(new_id, y0, x0, mask, iou, state.window, removed)

    # -- output ------------------------------------------------------------------------------------
    def save(self, out_dir: str | Path, name: str, overlay: bool = False) -> list[Path]:
        """`<name>.tif` and `<name>.csv` as `predict.py` writes them (`export.save_labels`;
        with `overlay`, `<name>_overlay.png`); returns the paths."""
        return save_labels(out_dir, name, self.labels, self.cells,
                           self.prepared if overlay else None)

    def add_to_training_set(self, dataset_dir: str | Path, name: str, split: str = "train",
                            **kwargs: Any):
        """Append this image and its current labels to a dataset in the project's format
        (`cellsam.labelling.dataset.add_to_training_set`; the same image added again
        replaces its earlier entry). Returns its `AddResult`."""
        from cellsam.labelling.dataset import add_to_training_set, image_hash

        s = self.predictor.settings
        settings = {"percentile": s.percentile, "clahe": s.clahe, "clahe_kernel": s.clahe_kernel,
                    "channels": None if self.channels is None else dict(self.channels)}
        return add_to_training_set(dataset_dir, self.prepared, self.labels, name,
                                   image_hash(self.image), split=split, prep=settings, **kwargs)


__all__ = ["CellInfo", "LabellingSession", "PromptResult", "PromptState"]
