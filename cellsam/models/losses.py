"""Element-wise losses shared by both stages' criteria (pure torch, unreduced)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dice_loss", "loss_dtype", "quality_focal_loss", "sigmoid_focal_loss"]


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32: losses are sums over many terms, never accumulated in bf16/fp16."""
    return torch.promote_types(dtype, torch.float32)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Element-wise sigmoid focal loss (Lin et al. 2017), unreduced.

    Args:
        logits: ``[...]`` raw scores.
        targets: ``[...]`` same shape, in [0, 1] (1 for a cell, 0 for background).
        alpha: weight of positives (``1 - alpha`` for negatives); negative to disable.
        gamma: focusing exponent.

    Returns:
        ``[...]`` ``-alpha_t (1 - p_t)^gamma log(p_t)``, in float32 (float64 for float64
        logits).
    """
    logits = logits.to(loss_dtype(logits.dtype))
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
    targets in [0, 1].

    Returns:
        ``[...]`` float32 (float64 for float64 logits).
    """
    logits = logits.to(loss_dtype(logits.dtype))
    quality = quality.to(logits)
    ce = F.binary_cross_entropy_with_logits(logits, quality, reduction="none")
    return ce * (quality - logits.sigmoid()).abs().pow(gamma)


def dice_loss(logits: Tensor, targets: Tensor, eps: float = 1.0) -> Tensor:
    """Per-mask soft Dice loss: logits, targets ``[K, H, W]`` -> ``[K]``
    (``1 - (2 |p t| + eps) / (|p| + |t| + eps)``)."""
    p = logits.to(loss_dtype(logits.dtype)).sigmoid().flatten(1)
    t = targets.to(p).flatten(1)
    return 1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)
