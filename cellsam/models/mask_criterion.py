"""Stage-2 mask losses (SAM's recipe): focal and Dice on each prompt's mask, MSE on the
predicted IoU. Pure torch; the training system samples prompts, decodes and logs."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from cellsam.models.losses import dice_loss, sigmoid_focal_loss

__all__ = ["MASK_LOSS_NAMES", "MaskCriterion", "mask_iou"]

MASK_LOSS_NAMES = ("mask_focal", "mask_dice", "iou_mse")


def mask_iou(pred: Tensor, target: Tensor) -> Tensor:
    """IoU of boolean masks `[K, H, W]` -> `[K]` (1 when both are empty)."""
    pred, target = pred.flatten(1), target.flatten(1)
    inter = (pred & target).sum(1).float()
    union = (pred | target).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


class MaskCriterion(nn.Module):
    """SAM's mask losses, one method per term, weighted by `weight_dict`.

    Every term is summed over the masks and divided by `num_masks`, which the caller
    supplies (the training system averages the mask count over ranks), so this module has
    no distributed logic. A term whose weight is 0 is not computed (it returns zeros): the
    focal term's `[K, H, W]` intermediate is the largest cost of a step.
    """

    def __init__(self, weight_dict: Mapping[str, float], focal_alpha: float,
                 focal_gamma: float) -> None:
        super().__init__()
        unknown = sorted(set(weight_dict) - set(MASK_LOSS_NAMES))
        if unknown:
            raise ValueError(f"unknown mask loss names {unknown}; expected {MASK_LOSS_NAMES}")
        self.weight_dict = dict(weight_dict)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def loss_focal(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-mask mean focal loss: `[K, H, W]` -> `[K]`."""
        loss = sigmoid_focal_loss(logits, targets, self.focal_alpha, self.focal_gamma)
        return loss.flatten(1).mean(1)

    def loss_dice(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-mask soft Dice loss: `[K, H, W]` -> `[K]`."""
        return dice_loss(logits, targets)

    def loss_iou(self, iou_pred: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        """`(iou_pred - IoU(logits > 0, targets >= 0.5))^2` per mask `[K]`: SAM's IoU head
        learns the IoU of the thresholded prediction (no gradient through the target)."""
        iou_true = mask_iou(logits.detach() > 0, targets >= 0.5)
        return (iou_pred.float() - iou_true) ** 2

    def forward(self, logits: Tensor, iou_pred: Tensor, targets: Tensor,
                num_masks: float | Tensor) -> dict[str, Tensor]:
        """
        Args:
            logits: `[K, H, W]` mask logits of K prompts.
            iou_pred: `[K]` the decoder's predicted IoU.
            targets: `[K, H, W]` true masks in [0, 1] (a fraction of each pixel when the
                loss runs below the label's resolution).
            num_masks: normaliser (scalar, >= 1).

        Returns:
            Unweighted scalar terms `mask_focal`, `mask_dice`, `iou_mse`.
        """
        if self.weight_dict.get("mask_focal", 0.0):
            focal = self.loss_focal(logits, targets).sum()
        else:
            focal = logits.new_zeros((), dtype=torch.float32)
        return {
            "mask_focal": focal / num_masks,
            "mask_dice": self.loss_dice(logits, targets).sum() / num_masks,
            "iou_mse": self.loss_iou(iou_pred, logits, targets).sum() / num_masks,
        }

    def weighted_total(self, losses: Mapping[str, Tensor]) -> Tensor:
        """`sum(weight_dict[name] * term)`; names without a weight count 0."""
        return sum(self.weight_dict.get(name, 0.0) * value for name, value in losses.items())
