"""Set-prediction losses for CellFinder, as DETR: Hungarian matching, then a sigmoid focal
classification loss over all queries and L1 + GIoU box losses over matched pairs, on the
final and every auxiliary decoder layer. Two optional aids hook in (`training_aids.py`)."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cellsam.models.finder.matcher import HungarianMatcher
from cellsam.models.finder.training_aids import aux_layer_repeats, iou_aware_class_loss
from cellsam.models.losses import loss_dtype, sigmoid_focal_loss
from cellsam.ops.boxes import box_cxcywh_to_xyxy, paired_box_iou, paired_generalized_box_iou

__all__ = ["LOSS_NAMES", "SetCriterion"]

LOSS_NAMES = ("loss_ce", "loss_bbox", "loss_giou")
_AUX_SUFFIX = re.compile(r"_\d+$")


class SetCriterion(nn.Module):
    """DETR-style losses on the final and every auxiliary decoder output.

    Each layer's output is matched to the targets on its own (as DETR does). All terms are
    divided by ``num_boxes``, which the caller supplies (the training system all-reduces it
    across processes and clamps it to >= 1), so this module has no distributed logic.

    Terms (unweighted): ``loss_ce`` focal loss summed over all queries of the batch,
    ``loss_bbox`` L1 over matched cxcywh pairs, ``loss_giou`` ``1 - GIoU`` over matched
    pairs; aux layer ``i`` adds ``loss_ce_i``, ``loss_bbox_i``, ``loss_giou_i``. A batch
    without any cell still gets a classification loss (all queries pushed to background)
    and box terms that are zero but attached to the graph.

    Hooks (off by default, as in DETR): ``aux_layer_matches_per_cell`` > 1 matches each
    cell to that many queries on the auxiliary layers, and ``iou_aware_class`` replaces the
    focal loss by the IoU-targeted quality focal loss (see ``training_aids.py``).
    """

    def __init__(
        self,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        focal_alpha: float,
        focal_gamma: float,
        aux_layer_matches_per_cell: int,
        iou_aware_class: bool,
    ) -> None:
        super().__init__()
        unknown = set(weight_dict) - set(LOSS_NAMES)
        if unknown:
            raise ValueError(f"unknown loss names {sorted(unknown)}; expected {LOSS_NAMES}")
        aux_layer_repeats(1, [], aux_layer_matches_per_cell)  # validates the value
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.aux_layer_matches_per_cell = aux_layer_matches_per_cell
        self.iou_aware_class = iou_aware_class

    def loss_labels(self, logits: Tensor, batch_idx: Tensor, query_idx: Tensor,
                    matched_iou: Tensor | None, num_boxes: float | Tensor) -> Tensor:
        """Classification over all queries ``logits [B, Q, 1]``; matched ``[K]`` are cells."""
        if self.iou_aware_class:
            return iou_aware_class_loss(logits, batch_idx, query_idx, matched_iou,
                                        self.focal_gamma, num_boxes)
        labels = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
        labels[batch_idx, query_idx, 0] = 1.0
        focal = sigmoid_focal_loss(logits, labels, self.focal_alpha, self.focal_gamma)
        return focal.sum() / num_boxes

    def loss_boxes(self, matched: Tensor, target_boxes: Tensor, num_boxes: float | Tensor
                   ) -> tuple[Tensor, Tensor, Tensor | None]:
        """L1 and ``1 - GIoU`` over matched cxcywh pairs ``[K, 4]``, and the pairs' IoU
        (only computed for the IoU-aware class targets)."""
        loss_bbox = F.l1_loss(matched, target_boxes, reduction="none").sum() / num_boxes
        matched_xyxy, target_xyxy = box_cxcywh_to_xyxy(matched), box_cxcywh_to_xyxy(target_boxes)
        giou = paired_generalized_box_iou(matched_xyxy, target_xyxy)
        loss_giou = (1 - giou).sum() / num_boxes
        iou = paired_box_iou(matched_xyxy, target_xyxy)[0] if self.iou_aware_class else None
        return loss_bbox, loss_giou, iou

    def layer_losses(
        self,
        outputs: dict,
        targets: list[dict],
        indices: list[tuple[Tensor, Tensor]],
        num_boxes: float | Tensor,
    ) -> dict[str, Tensor]:
        """Losses of one decoder layer given its matching.

        Args:
            outputs: ``{"pred_logits": [B, Q, 1], "pred_boxes": [B, Q, 4]}``.
            targets: B dicts with ``"boxes": [N_i, 4]`` cxcywh.
            indices: B tuples ``(query_idx [K_i], target_idx [K_i])`` from the matcher.
            num_boxes: normaliser (scalar).

        Returns:
            ``{"loss_ce", "loss_bbox", "loss_giou"}`` scalar float32 tensors.
        """
        logits, pred_boxes = outputs["pred_logits"], outputs["pred_boxes"]
        device = logits.device
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(
            device
        )
        query_idx = torch.cat([src for src, _ in indices]).to(device)
        target_boxes = torch.cat(
            [t["boxes"].to(device)[tgt.to(device)] for t, (_, tgt) in zip(targets, indices)]
        ).to(loss_dtype(pred_boxes.dtype))
        # [K, 4]; with K = 0 the sums are 0 but still part of the graph.
        matched = pred_boxes[batch_idx, query_idx].to(target_boxes.dtype)
        loss_bbox, loss_giou, iou = self.loss_boxes(matched, target_boxes, num_boxes)
        loss_ce = self.loss_labels(logits, batch_idx, query_idx, iou, num_boxes)
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def forward(
        self, outputs: dict, targets: list[dict], num_boxes: float | Tensor
    ) -> dict[str, Tensor]:
        """
        Args:
            outputs: CellFinder output (``pred_logits [B, Q, 1]``, ``pred_boxes [B, Q, 4]``,
                optional ``aux_outputs`` list of the same).
            targets: B dicts with ``"boxes": [N_i, 4]`` cxcywh normalised.
            num_boxes: average number of cells per process, already clamped to >= 1.

        Returns:
            Unweighted scalar terms: ``loss_ce``, ``loss_bbox``, ``loss_giou`` and
            ``loss_ce_i``, ``loss_bbox_i``, ``loss_giou_i`` for aux layer i.
        """
        aux_layers = outputs.get("aux_outputs", [])
        k = 1
        if aux_layers:
            k = aux_layer_repeats(outputs["pred_logits"].shape[1], targets,
                                  self.aux_layer_matches_per_cell)
        if k == 1:  # every layer matched on its own, as in DETR; all at once for speed
            terms = self._matched_terms([outputs, *aux_layers], targets, 1, num_boxes)
        else:
            terms = self._matched_terms([outputs], targets, 1, num_boxes)
            terms += self._matched_terms(aux_layers, targets, k, num_boxes)
        named = dict(terms[0])
        for i, layer in enumerate(terms[1:]):
            named.update({f"{name}_{i}": value for name, value in layer.items()})
        return named

    def _matched_terms(
        self, layers: list[dict], targets: list[dict], k: int, num_boxes: float | Tensor
    ) -> list[dict[str, Tensor]]:
        """Each layer's terms with every layer matched to ``k`` copies of each target
        (``k = 1``: one-to-one), normalised by ``num_boxes * k``."""
        if k > 1:
            targets = [{"boxes": t["boxes"].repeat(k, 1)} for t in targets]
        matched = self.matcher.match_layers(layers, targets) if layers else []
        return [
            self.layer_losses(out, targets, indices, num_boxes * k)
            for out, indices in zip(layers, matched)
        ]

    def weighted_total(self, losses: dict[str, Tensor]) -> Tensor:
        """``sum(weight_dict[base(name)] * term)``; aux terms share their base's weight.

        Terms whose base name is not in ``weight_dict`` count with weight 0 (so leaving a
        name out of the config switches that loss off).
        """
        total = None
        for name, value in losses.items():
            weight = self.weight_dict.get(_AUX_SUFFIX.sub("", name))
            if weight is None:
                continue
            term = weight * value
            total = term if total is None else total + term
        if total is None:
            raise ValueError(f"no loss term has a weight: {sorted(losses)}")
        return total
