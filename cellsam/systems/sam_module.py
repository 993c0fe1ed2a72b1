"""Stage 2: SAM's neck (by default) trained with ground-truth boxes as prompts.

The ViT trunk stays frozen so CellFinder, which reads the same trunk, keeps working; the
prompt encoder and mask decoder keep SAM's weights. Which parts train is the config list
`trainable` (any of `trunk`, `neck`, `prompt_encoder`, `mask_decoder`), so decoder or
whole-SAM fine-tuning needs no new code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from cellsam.models.cellsam import CellSAM
from cellsam.models.mask_criterion import MASK_LOSS_NAMES, MaskCriterion, mask_iou
from cellsam.systems.common import (
    CheckpointMetaMixin,
    freeze_except,
    log_step_scalars,
    trainable_adamw,
)
from cellsam.utils.distributed import all_reduce_mean, gather_records, world_size

STAGE2_PARTS = ("trunk", "neck", "prompt_encoder", "mask_decoder")


def jitter_boxes(boxes: Tensor, std: float, size: int, generator: torch.Generator | None = None
                 ) -> Tensor:
    """Move each corner of `[K, 4]` xyxy boxes by Gaussian noise of `std` x the box's width
    (x) or height (y); clamp to `[0, size]` and keep at least 1 px per side."""
    if std <= 0 or boxes.numel() == 0:
        return boxes
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    noise = torch.randn(boxes.shape, generator=generator, device=boxes.device) * std * wh
    out = (boxes + noise).clamp(0, size)
    x0, x1 = torch.minimum(out[:, 0], out[:, 2]), torch.maximum(out[:, 0], out[:, 2])
    y0, y1 = torch.minimum(out[:, 1], out[:, 3]), torch.maximum(out[:, 1], out[:, 3])
    x1, y1 = torch.maximum(x1, x0 + 1), torch.maximum(y1, y0 + 1)
    return torch.stack([x0, y0, x1, y1], 1)


class SamModule(CheckpointMetaMixin, L.LightningModule):
    """Mask loss as in SAM (focal + dice, 20:1) plus MSE on the predicted IoU
    (`MaskCriterion`).

    At most `max_boxes_per_image` ground-truth boxes per image per step (random subset)
    bound the decoder's memory; `box_jitter` adds corner noise. Validation decodes every
    ground-truth box without jitter and logs the mean mask IoU over cells per dataset
    (`val/<dataset>/mask_iou`) and over all cells (`val/all/mask_iou`).
    """

    stage = "sam"

    def __init__(
        self,
        model: CellSAM,
        trainable: Sequence[str] = ("neck",),
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        max_boxes_per_image: int = 32,
        box_jitter: float = 0.05,
        *,
        loss_weights: Mapping[str, float],
        focal_alpha: float,
        focal_gamma: float,
        val_box_batch: int = 64,
        loss_size: int | None = None,
        lr_drop: int | None = None,
        lr_drop_factor: float = 0.1,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "run_config"])
        self.model = model
        self.run_config = dict(run_config or {})
        trainable = list(trainable)
        bad = sorted(set(trainable) - set(STAGE2_PARTS))
        if bad:
            # CellFinder has no loss in this stage: its weights would never change, and DDP
            # refuses parameters that get no gradient.
            raise ValueError(f"stage 2 cannot train {bad}; choose from {list(STAGE2_PARTS)}")
        if not trainable:
            raise ValueError("stage 2: `trainable` is empty, nothing would train")
        freeze_except(model, trainable)
        if "prompt_encoder" in trainable:
            # Box prompts use only the two corner embeddings and the no-mask embedding; the
            # point, padding and mask-input weights get no gradient (DDP would stop on them).
            pe = model.sam.prompt_encoder
            for p in [*pe.point_embeddings[0].parameters(), *pe.point_embeddings[1].parameters(),
                      *pe.not_a_point_embed.parameters(), *pe.mask_downscaling.parameters()]:
                p.requires_grad_(False)
        self.criterion = MaskCriterion(loss_weights, focal_alpha, focal_gamma)
        self._val_records: list[dict[str, Any]] = []

    # -- shared ---------------------------------------------------------------------------------
    def trunk_features(self, images: Tensor) -> Tensor:
        """What SAM's neck reads: `[B, 3, S, S]` -> `[B, C, h, w]` (the feature cache stores
        these when the trunk is frozen)."""
        return self.model.trunk(images)

    def embeddings(self, batch: dict[str, Any]) -> Tensor:
        """A batch's `images` `[B, 3, S, S]` (or cached trunk `features`) -> SAM image
        embeddings `[B, P, h, w]`; no graph through a frozen trunk (saves its activations)."""
        if "features" in batch:
            return self.model.embed(batch["features"])
        train_trunk = "trunk" in self.hparams.trainable and self.training
        with torch.set_grad_enabled(train_trunk and torch.is_grad_enabled()):
            features = self.trunk_features(batch["images"])
        return self.model.embed(features)

    def _input_boxes(self, boxes_xyxy: Tensor, label_hw: tuple[int, int]) -> Tensor:
        """Label-pixel boxes `[K, 4]` -> model-input pixels (the input is the label resized)."""
        s = self.model.image_size
        h, w = label_hw
        scale = torch.tensor([s / w, s / h, s / w, s / h], device=self.device)
        return boxes_xyxy.to(self.device).float() * scale

    def _decode_to_size(self, embedding: Tensor, boxes: Tensor, size: tuple[int, int]
                        ) -> tuple[Tensor, Tensor]:
        """Mask logits upsampled to `size` (normally the label's) `[K, H, W]`, predicted IoU `[K]`.

        The loss compares upsampled logits with the masks as stored rather than shrinking the
        masks to the low-res grid (128 px for the tiny model): thin cells (bacteria 2-3 px
        wide) would vanish or shift there, and inference thresholds these same upsampled
        logits, so training optimises what is evaluated.
        """
        low, iou = self.model.decode(embedding, boxes)
        logits = F.interpolate(low[:, None].float(), size=size, mode="bilinear",
                               align_corners=False)[:, 0]
        return logits, iou.float()

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        hp = self.hparams
        emb = self.embeddings(batch)
        labels = batch["labels"].to(self.device)
        label_hw = tuple(labels.shape[-2:])
        # The loss runs at the label size by default; `loss_size` trades that for speed.
        loss_hw = (hp.loss_size, hp.loss_size) if hp.loss_size else label_hw
        logits, iou_pred, targets = [], [], []
        for i, target in enumerate(batch["targets"]):
            ids = target["ids"]
            if ids.numel() == 0:
                continue
            if ids.numel() > hp.max_boxes_per_image:
                pick = torch.randperm(ids.numel())[: hp.max_boxes_per_image]
            else:
                pick = torch.arange(ids.numel())
            boxes = self._input_boxes(target["boxes_xyxy"][pick], label_hw)
            boxes = jitter_boxes(boxes, hp.box_jitter, self.model.image_size)
            gt = (labels[i][None] == ids[pick].to(self.device)[:, None, None]).float()
            if loss_hw != label_hw:  # fraction of each loss pixel covered by the cell
                gt = F.interpolate(gt[None], size=loss_hw, mode="area")[0]
            image_logits, image_iou = self._decode_to_size(emb[i:i + 1], boxes, loss_hw)
            logits.append(image_logits)
            iou_pred.append(image_iou)
            targets.append(gt)
        # Normalise by the mask count averaged over ranks (as stage 1 does with boxes): with
        # DDP's gradient averaging every mask then weighs the same as in one process on the
        # global batch. Every rank runs the same collectives, also one without cells.
        n_local = torch.tensor(float(sum(len(t) for t in targets)), device=self.device)
        n_masks_mean = all_reduce_mean(n_local)
        n_masks = n_masks_mean.clamp_min(1.0)
        if targets:
            losses = self.criterion(torch.cat(logits), torch.cat(iou_pred), torch.cat(targets),
                                    n_masks)
            total = self.criterion.weighted_total(losses)
        else:
            # No cell in this batch: zero terms, and a zero loss that still touches every
            # trainable parameter, so DDP's gradient all-reduce stays in step across ranks.
            zero = torch.zeros((), device=self.device)
            losses = dict.fromkeys(MASK_LOSS_NAMES, zero)
            total = sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)
        scalars = {"train/loss": total, **{f"train/{k}": v for k, v in losses.items()},
                   "train/masks_per_step": n_masks_mean * world_size()}
        log_step_scalars(self, scalars, len(batch["targets"]), prog_bar=("train/loss",))
        return total

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        return trainable_adamw(self)

    # -- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def cell_ious(self, embedding: Tensor, boxes_xyxy: Tensor, gt: Tensor) -> Tensor:
        """IoU `[K]` of each box's mask (logit > 0) with its true mask `gt` `[K, H, W]`."""
        label_hw = tuple(gt.shape[-2:])
        boxes = self._input_boxes(boxes_xyxy, label_hw)
        out = []
        step = self.hparams.val_box_batch
        for j in range(0, boxes.shape[0], step):
            logits, _ = self._decode_to_size(embedding, boxes[j:j + step], label_hw)
            out.append(mask_iou(logits > 0, gt[j:j + step]))
        return torch.cat(out) if out else torch.zeros(0, device=self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
                        ) -> None:
        emb = self.embeddings(batch)
        labels = batch["labels"].to(self.device)
        for i, target in enumerate(batch["targets"]):
            ids = target["ids"].to(self.device)
            gt = labels[i][None] == ids[:, None, None]
            ious = self.cell_ious(emb[i:i + 1], target["boxes_xyxy"], gt)
            self._val_records.append({
                "dataset": batch["dataset"][i],
                "index": int(batch["index"][i]),
                "iou_sum": float(ious.sum()),
                "cells": int(ious.numel()),
            })

    def on_validation_epoch_end(self) -> None:
        records = gather_records(self._val_records)
        self._val_records = []
        totals: dict[str, list[float]] = {}
        for r in records:
            for name in (r["dataset"], "all"):
                acc = totals.setdefault(name, [0.0, 0.0])
                acc[0] += r["iou_sum"]
                acc[1] += r["cells"]
        # Every rank holds the same gathered records, so no further sync is needed.
        totals.setdefault("all", [0.0, 0.0])  # the monitored key exists even with no cells
        for name, (iou_sum, cells) in totals.items():
            value = iou_sum / cells if cells else 0.0
            self.log(f"val/{name}/mask_iou", value, prog_bar=name == "all", sync_dist=False)
