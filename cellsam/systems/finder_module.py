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
from cellsam.systems.common import (
    CheckpointMetaMixin,
    adamw,
    freeze_except,
    log_step_scalars,
    with_step_decay,
)
from cellsam.utils.distributed import all_reduce_mean, gather_records


class FinderModule(CheckpointMetaMixin, L.LightningModule):
    """Owns the detection losses, parameter groups, LR schedule and box-AP validation.

    Only the trunk and CellFinder train (CellFinder alone with `freeze_trunk`); SAM's neck,
    prompt encoder and mask decoder are frozen (unused in this stage, and DDP needs every
    trainable parameter to get a gradient). Batches hold `images`, or with a frozen trunk
    and the `FeatureCache` callback, the trunk's `features`.
    """

    stage = "finder"

    def __init__(
        self,
        model: CellSAM,
        *,
        lr: float,
        lr_trunk: float,
        weight_decay: float,
        lr_drop: int,
        lr_drop_factor: float,
        loss_weights: Mapping[str, float],
        matcher_costs: Mapping[str, float],
        matcher_solver: str,
        focal_alpha: float,
        focal_gamma: float,
        aux_layer_matches_per_cell: int = 1,
        iou_aware_class: bool = False,
        freeze_trunk: bool = False,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "run_config"])
        self.model = model
        self.run_config = dict(run_config or {})
        freeze_except(model, ["finder"] if freeze_trunk else ["trunk", "finder"])
        matcher = HungarianMatcher(**dict(matcher_costs), focal_alpha=focal_alpha,
                                   focal_gamma=focal_gamma, solver=matcher_solver)
        self.criterion = SetCriterion(
            matcher,
            dict(loss_weights),
            focal_alpha,
            focal_gamma,
            aux_layer_matches_per_cell=aux_layer_matches_per_cell,
            iou_aware_class=iou_aware_class,
        )
        self._val_records: list[dict[str, Any]] = []

    # -- training -------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = self.detect(batch)
        targets = [{"boxes": t["boxes"].to(self.device)} for t in batch["targets"]]
        # DETR normalisation: mean boxes per process over all ranks, so that with DDP's
        # gradient averaging each box weighs the same as in one process on the global batch.
        local = torch.tensor(float(sum(len(t["boxes"]) for t in targets)), device=self.device)
        num_boxes = all_reduce_mean(local).clamp_min(1.0)
        losses = self.criterion(outputs, targets, num_boxes)
        total = self.criterion.weighted_total(losses)
        # With the box-count normalisation the rank mean is the global batch's loss exactly.
        # The names depend only on the model's layers, so every rank logs the same ones.
        scalars = {"train/loss": total, **{f"train/{k}": v for k, v in losses.items()}}
        log_step_scalars(self, scalars, len(targets), prog_bar=("train/loss",))
        return total

    def trunk_features(self, images: torch.Tensor) -> torch.Tensor:
        """What CellFinder reads: `[B, 3, S, S]` -> `[B, C, h, w]` (the detection trunk's
        map; the feature cache stores these)."""
        return self.model.detection_features(images)

    def detect(self, batch: dict[str, Any]) -> dict[str, Any]:
        """CellFinder outputs for a batch of `images` or cached `features`."""
        if "features" in batch:
            return self.model.finder(batch["features"])
        if self.hparams.freeze_trunk:  # no graph through the frozen trunk
            with torch.no_grad():
                features = self.trunk_features(batch["images"])
            return self.model.finder(features)
        return self.model.detect(batch["images"])

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = [{"params": self.model.part_parameters("finder"), "lr": hp.lr, "name": "finder"}]
        if not hp.freeze_trunk:
            groups.insert(0, {"params": self.model.part_parameters("trunk"), "lr": hp.lr_trunk,
                              "name": "trunk"})
        optimizer = adamw(groups, hp.lr, hp.weight_decay)
        return with_step_decay(optimizer, hp.lr_drop, hp.lr_drop_factor)

    # -- validation -----------------------------------------------------------------------
    @torch.no_grad()
    def detections(
        self, batch: dict[str, Any], height: int, width: int
    ) -> list[dict[str, torch.Tensor]]:
        """Scored boxes per image: `boxes` `[Q, 4]` xyxy pixels of an `height x width` label,
        `scores` `[Q]` (every query; the evaluators cap at 10,000 per image)."""
        out = self.detect(batch)
        scale = torch.tensor([width, height, width, height], device=self.device)
        boxes = box_cxcywh_to_xyxy(out["pred_boxes"].float()) * scale
        scores = out["pred_logits"].float().sigmoid()[..., 0]
        return [{"boxes": b.cpu(), "scores": s.cpu()} for b, s in zip(boxes, scores)]

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        h, w = batch["labels"].shape[-2:]
        dets = self.detections(batch, h, w)
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
        # Every rank holds the same gathered numbers, so no further sync is needed.
        for name, values in box_ap_by_dataset(records).items():
            for key, value in values.items():
                self.log(f"val/{name}/{key}", value, prog_bar=name == "all" and key == "box_ap50",
                         sync_dist=False)
