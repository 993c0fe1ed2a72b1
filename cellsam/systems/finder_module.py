"""Stage 1: the ViT trunk and CellFinder trained together on box detection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from cellsam.metrics.boxes_ap import box_ap_by_dataset
from cellsam.models.cellsam import CellSAM
from cellsam.models.finder import HungarianMatcher, SetCriterion
from cellsam.ops.boxes import box_cxcywh_to_xyxy
from cellsam.systems.common import CheckpointMetaMixin, adamw, freeze_except, with_step_decay
from cellsam.utils.distributed import all_reduce_mean, gather_records


class FinderModule(CheckpointMetaMixin, L.LightningModule):
    """Owns the detection losses, parameter groups, LR schedule and box-AP validation.

    Only the trunk and CellFinder train; SAM's neck, prompt encoder and mask decoder are
    frozen (unused in this stage, and DDP needs every trainable parameter to get a gradient).
    """

    stage = "finder"

    def __init__(
        self,
        model: CellSAM,
        lr: float = 1e-4,
        lr_trunk: float = 1e-5,
        weight_decay: float = 1e-4,
        lr_drop: int = 40,
        lr_drop_factor: float = 0.1,
        loss_weights: Mapping[str, float] | None = None,
        matcher_costs: Mapping[str, float] | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        aux_one_to_many: int = 1,
        iou_aware_class: bool = False,
        one_to_many_k: int = 6,
        one_to_many_weight: float = 1.0,
        coco_every_n_epochs: int = 1,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "run_config"])
        self.model = model
        self.run_config = dict(run_config or {})
        freeze_except(model, ["trunk", "finder"])
        matcher = HungarianMatcher(
            **dict(matcher_costs or {"cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0}),
            focal_alpha=focal_alpha,
            focal_gamma=focal_gamma,
        )
        weights = dict(loss_weights or {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0})
        self.criterion = SetCriterion(
            matcher,
            weights,
            focal_alpha,
            focal_gamma,
            aux_one_to_many,
            iou_aware_class,
            one_to_many_k,
            one_to_many_weight,
        )
        self._val_records: list[dict[str, Any]] = []
        self._last_val: dict[str, float] = {}

    # -- training -------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = self.model.detect(batch["images"])
        targets = [{"boxes": t["boxes"].to(self.device)} for t in batch["targets"]]
        # DETR normalisation: mean boxes per process over all ranks, so that with DDP's
        # gradient averaging each box weighs the same as in one process on the global batch.
        local = torch.tensor(float(sum(len(t["boxes"]) for t in targets)), device=self.device)
        num_boxes = all_reduce_mean(local).clamp_min(1.0)
        losses = self.criterion(outputs, targets, num_boxes)
        total = self.criterion.weighted_total(losses)
        bs = len(targets)
        # With the box-count normalisation the rank mean is the global batch's loss exactly.
        self.log("train/loss", total, prog_bar=True, batch_size=bs, sync_dist=True)
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=bs, sync_dist=True)
        return total

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = [
            {"params": self.model.part_parameters("trunk"), "lr": hp.lr_trunk, "name": "trunk"},
            {"params": self.model.part_parameters("finder"), "lr": hp.lr, "name": "finder"},
        ]
        optimizer = adamw(groups, hp.lr, hp.weight_decay)
        return with_step_decay(optimizer, hp.lr_drop, hp.lr_drop_factor)

    # -- validation -----------------------------------------------------------------------
    @torch.no_grad()
    def detections(
        self, images: torch.Tensor, height: int, width: int
    ) -> list[dict[str, torch.Tensor]]:
        """Scored boxes per image: `boxes` `[Q, 4]` xyxy pixels of an `height x width` label,
        `scores` `[Q]` (every query; the evaluators cap at 10,000 per image)."""
        out = self.model.detect(images)
        scale = torch.tensor([width, height, width, height], device=images.device)
        boxes = box_cxcywh_to_xyxy(out["pred_boxes"].float()) * scale
        scores = out["pred_logits"].float().sigmoid()[..., 0]
        return [{"boxes": b.cpu(), "scores": s.cpu()} for b, s in zip(boxes, scores)]

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        h, w = batch["labels"].shape[-2:]
        dets = self.detections(batch["images"], h, w)
        for i, det in enumerate(dets):
            self._val_records.append(
                {
                    "dataset": batch["dataset"][i],
                    "index": int(batch["index"][i]),
                    "gt_boxes": batch["targets"][i]["boxes_xyxy"].numpy(),
                    "boxes": det["boxes"].numpy(),
                    "scores": det["scores"].numpy(),
                    "size": (int(h), int(w)),
                }
            )

    def on_validation_epoch_end(self) -> None:
        records = gather_records(self._val_records)
        self._val_records = []
        every = max(1, int(self.hparams.coco_every_n_epochs))
        if not self._last_val or self.current_epoch % every == 0 or self.trainer.sanity_checking:
            self._last_val = {}
            for name, values in box_ap_by_dataset(records).items():
                for key, value in values.items():
                    self._last_val[f"val/{name}/{key}"] = value
        # Every rank holds the same gathered numbers, so no further sync is needed.
        for key, value in self._last_val.items():
            self.log(key, value, prog_bar=key.startswith("val/all/box_ap50"), sync_dist=False)
