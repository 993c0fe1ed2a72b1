"""Set-prediction losses for CellFinder (sigmoid focal, L1 and GIoU on Hungarian matches)."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cellsam.models.finder.matcher import HungarianMatcher
from cellsam.ops.boxes import box_cxcywh_to_xyxy, paired_box_iou, paired_generalized_box_iou

__all__ = ["LOSS_NAMES", "SetCriterion", "quality_focal_loss", "sigmoid_focal_loss"]

LOSS_NAMES = ("loss_ce", "loss_bbox", "loss_giou")
_AUX_SUFFIX = re.compile(r"_\d+$")
_ONE_TO_MANY = "_one_to_many"


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    # Losses are sums over thousands of queries: never accumulate them in bf16/fp16.
    return torch.promote_types(dtype, torch.float32)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Element-wise sigmoid focal loss (Lin et al. 2017), unreduced.

    Args:
        logits: ``[...]`` raw scores.
        targets: ``[...]`` same shape, 1 for a cell, 0 for background.
        alpha: weight of positives (``1 - alpha`` for negatives); negative to disable.
        gamma: focusing exponent.

    Returns:
        ``[...]`` ``-alpha_t (1 - p_t)^gamma log(p_t)``, in float32 (float64 for float64
        logits).
    """
    logits = logits.to(_loss_dtype(logits.dtype))
    targets = targets.to(logits)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def quality_focal_loss(logits: Tensor, quality: Tensor, gamma: float) -> Tensor:
    """Element-wise quality focal loss (Li et al. 2020, GFL), unreduced.

    ``BCE(sigmoid(logits), quality) * |quality - sigmoid(logits)|^gamma`` with soft
    targets: a matched query's target is its box IoU, every other query's is 0. Scores then
    rank boxes by quality, not only by "matched or not".

    Args:
        logits: ``[...]`` raw scores.
        quality: ``[...]`` targets in [0, 1].
        gamma: focusing exponent.

    Returns:
        ``[...]`` float32 (float64 for float64 logits).
    """
    logits = logits.to(_loss_dtype(logits.dtype))
    quality = quality.to(logits)
    ce = F.binary_cross_entropy_with_logits(logits, quality, reduction="none")
    return ce * (quality - logits.sigmoid()).abs().pow(gamma)


def _named(terms: list[dict[str, Tensor]], infix: str) -> dict[str, Tensor]:
    """Per-layer terms (last layer first, then aux layers 0, 1, ...) -> ``{"loss_ce" +
    infix: ..., "loss_ce" + infix + "_0": ...}``."""
    named = {f"{name}{infix}": value for name, value in terms[0].items()}
    for i, layer in enumerate(terms[1:]):
        named.update({f"{name}{infix}_{i}": value for name, value in layer.items()})
    return named


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

    Outputs with a ``"one_to_many"`` entry (CellFinder's hybrid branch, training only) add
    ``loss_ce_one_to_many``, ..., ``loss_giou_one_to_many_i``: every layer of the branch
    matched to ``one_to_many_k`` copies of each target (H-DETR), divided by
    ``num_boxes * k`` and weighted ``one_to_many_weight`` times the base term's weight.
    """

    def __init__(
        self,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        aux_one_to_many: int = 1,
        iou_aware_class: bool = False,
        one_to_many_k: int = 6,
        one_to_many_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if aux_one_to_many < 1:
            raise ValueError(f"aux_one_to_many must be >= 1, got {aux_one_to_many}")
        if one_to_many_k < 1:
            raise ValueError(f"one_to_many_k must be >= 1, got {one_to_many_k}")
        unknown = set(weight_dict) - set(LOSS_NAMES)
        if unknown:
            raise ValueError(f"unknown loss names {sorted(unknown)}; expected {LOSS_NAMES}")
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.aux_one_to_many = aux_one_to_many
        self.iou_aware_class = iou_aware_class
        self.one_to_many_k = one_to_many_k
        self.one_to_many_weight = one_to_many_weight

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
        ).to(_loss_dtype(pred_boxes.dtype))

        # [K, 4]; with K = 0 the sums below are 0 but still part of the graph.
        matched = pred_boxes[batch_idx, query_idx].to(target_boxes.dtype)
        loss_bbox = F.l1_loss(matched, target_boxes, reduction="none").sum() / num_boxes
        matched_xyxy = box_cxcywh_to_xyxy(matched)
        target_xyxy = box_cxcywh_to_xyxy(target_boxes)
        giou = paired_generalized_box_iou(matched_xyxy, target_xyxy)
        loss_giou = (1 - giou).sum() / num_boxes

        labels = torch.zeros(logits.shape, dtype=torch.float32, device=device)  # [B, Q, 1]
        if self.iou_aware_class:
            labels[batch_idx, query_idx, 0] = paired_box_iou(matched_xyxy, target_xyxy)[0].detach()
            loss_ce = quality_focal_loss(logits, labels, self.focal_gamma).sum() / num_boxes
        else:
            labels[batch_idx, query_idx, 0] = 1.0
            focal = sigmoid_focal_loss(logits, labels, self.focal_alpha, self.focal_gamma)
            loss_ce = focal.sum() / num_boxes
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def forward(
        self, outputs: dict, targets: list[dict], num_boxes: float | Tensor
    ) -> dict[str, Tensor]:
        """
        Args:
            outputs: CellFinder output (``pred_logits [B, Q, 1]``, ``pred_boxes [B, Q, 4]``,
                optional ``aux_outputs`` list of the same, optional ``one_to_many`` dict
                of the same for the hybrid branch).
            targets: B dicts with ``"boxes": [N_i, 4]`` cxcywh normalised.
            num_boxes: average number of cells per process, already clamped to >= 1.

        Returns:
            Unweighted scalar terms: ``loss_ce``, ``loss_bbox``, ``loss_giou`` and
            ``loss_ce_i``, ``loss_bbox_i``, ``loss_giou_i`` for aux layer i; with a branch
            also ``loss_ce_one_to_many`` ... ``loss_giou_one_to_many_i``.
        """
        losses = self._set_losses(outputs, targets, num_boxes)
        if "one_to_many" in outputs:
            losses.update(self._one_to_many_losses(outputs["one_to_many"], targets, num_boxes))
        return losses

    def _set_losses(
        self, outputs: dict, targets: list[dict], num_boxes: float | Tensor
    ) -> dict[str, Tensor]:
        """The main queries' terms: one-to-one on the last layer (aux layers: see
        ``_aux_repeats``)."""
        aux_layers = outputs.get("aux_outputs", [])
        k = self._aux_repeats(outputs, targets, self.aux_one_to_many) if aux_layers else 1
        if k == 1:  # every layer matched on its own, as in DETR; all at once for speed
            terms = self._matched_terms([outputs, *aux_layers], targets, 1, num_boxes)
        else:
            terms = self._matched_terms([outputs], targets, 1, num_boxes)
            terms += self._matched_terms(aux_layers, targets, k, num_boxes)
        return _named(terms, "")

    def _one_to_many_losses(
        self, branch: dict, targets: list[dict], num_boxes: float | Tensor
    ) -> dict[str, Tensor]:
        """Hybrid-branch terms: every layer matched to k copies of the targets."""
        k = self._aux_repeats(branch, targets, self.one_to_many_k)
        layers = [branch, *branch.get("aux_outputs", [])]
        return _named(self._matched_terms(layers, targets, k, num_boxes), _ONE_TO_MANY)

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

    def _aux_repeats(self, outputs: dict, targets: list[dict], wanted: int) -> int:
        """Copies of each target for the auxiliary layers' one-to-many matching.

        H-DETR's "hybrid layer" scheme: intermediate layers match every cell to up to
        ``aux_one_to_many`` queries, which gives them several times more positive examples
        early in training, while the final layer stays one-to-one (no duplicates at
        inference); the hybrid branch asks for ``one_to_many_k``. Capped at ``wanted`` and
        so that the copies still fit in the queries. `k` follows the local batch, so under
        DDP ranks may use different k (each divides its terms by `num_boxes * k`).
        """
        if wanted == 1:
            return 1
        num_queries = outputs["pred_logits"].shape[1]
        most = max((int(t["boxes"].shape[0]) for t in targets), default=0)
        if most == 0:
            return 1
        return max(1, min(wanted, num_queries // most))

    def weighted_total(self, losses: dict[str, Tensor]) -> Tensor:
        """``sum(weight_dict[base(name)] * term)``; aux terms share their base's weight,
        hybrid-branch terms get it times ``one_to_many_weight``.

        Terms whose base name is not in ``weight_dict`` count with weight 0 (so leaving a
        name out of the config switches that loss off).
        """
        total = None
        for name, value in losses.items():
            base = _AUX_SUFFIX.sub("", name)
            branch = base.endswith(_ONE_TO_MANY)
            weight = self.weight_dict.get(base.removesuffix(_ONE_TO_MANY))
            if weight is None:
                continue
            if branch:
                weight = weight * self.one_to_many_weight
            term = weight * value
            total = term if total is None else total + term
        if total is None:
            raise ValueError(f"no loss term has a weight: {sorted(losses)}")
        return total
