"""Two optional stage-1 training aids beside DETR's set criterion (both off in the paper's
recipe, both on in the CPU quickstart; README "Quickstart" has their measurements).

- **IoU-aware class targets** (`iou_aware_class_loss`): a matched query's class target is
  its box IoU with the cell instead of 1, trained with the quality focal loss (Li et al.
  2020, GFL), so scores rank boxes by quality, not only by "matched or not".
- **More matches per cell on the auxiliary decoder layers** (`aux_layer_repeats`): H-DETR's
  hybrid-layer scheme. Intermediate layers match each cell to k queries, which gives them k
  times more positive examples early in training; the final layer stays one-to-one, so
  inference sees no duplicates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cellsam.models.losses import quality_focal_loss

__all__ = ["aux_layer_repeats", "iou_aware_class_loss"]


def aux_layer_repeats(num_queries: int, targets: list[dict], matches_per_cell: int) -> int:
    """Copies of each target for the auxiliary layers' matching: `matches_per_cell`, capped
    so that the copies of the most crowded image still fit in the queries (>= 1).

    `k` follows the local batch, so under DDP ranks may use different k; each divides its
    terms by `num_boxes * k`.
    """
    if matches_per_cell < 1:
        raise ValueError(f"aux_layer_matches_per_cell must be >= 1, got {matches_per_cell}")
    most = max((int(t["boxes"].shape[0]) for t in targets), default=0)
    if matches_per_cell == 1 or most == 0:
        return 1
    return max(1, min(matches_per_cell, num_queries // most))


def iou_aware_class_loss(logits: Tensor, batch_idx: Tensor, query_idx: Tensor,
                         matched_iou: Tensor, gamma: float, num_boxes: float | Tensor
                         ) -> Tensor:
    """Quality focal loss over all queries: `logits [B, Q, 1]`; matched queries
    `(batch_idx, query_idx)` `[K]` get their box IoU `matched_iou [K]` (no gradient) as
    target, every other query 0. Summed and divided by `num_boxes`."""
    quality = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
    quality[batch_idx, query_idx, 0] = matched_iou.detach().float()
    return quality_focal_loss(logits, quality, gamma).sum() / num_boxes
