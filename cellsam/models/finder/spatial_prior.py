"""Optional Gaussian spatial prior for the decoder's RCDA cross-attention.

Anchor DETR queries find "their" part of the image only through learned position
embeddings, which start out unrelated to the anchors; training first sits on a plateau
where every query reads the same global average (README, Quickstart).
SMCA-DETR (Gao et al., ICCV 2021) adds a Gaussian around each query's reference point to
the cross-attention logits instead. With RCDA that prior factorises exactly into a term
over x for the row softmax and one over y for the column softmax, so it costs two
``[h, Q, W]``-sized additions. Off by default (the paper's model has no prior).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["AnchorSpatialPrior"]


class AnchorSpatialPrior(nn.Module):
    """Per-head Gaussian log-prior around each anchor: ``-(a - p)^2 / (2 sigma_h^2)``.

    ``sigma_h`` (a fraction of the image side) is learned per head; heads start at widths
    spread geometrically between ``sigma_min`` and ``sigma_max``, so some heads look
    locally and some more widely.
    """

    def __init__(self, num_heads: int, sigma_min: float = 0.03, sigma_max: float = 0.25) -> None:
        super().__init__()
        if not 0.0 < sigma_min <= sigma_max:
            raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
        if num_heads > 1:
            ratios = torch.arange(num_heads, dtype=torch.float32) / (num_heads - 1)
        else:
            ratios = torch.zeros(1)
        log_sigma = math.log(sigma_min) + ratios * (math.log(sigma_max) - math.log(sigma_min))
        self.log_sigma = nn.Parameter(log_sigma)  # [h]

    def forward(self, anchors: Tensor, pos_x: Tensor, pos_y: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            anchors: ``[..., Q, 2]`` reference points (x, y) in [0, 1] (the anchors
                ``[Q, 2]``).
            pos_x: ``[W]`` normalised x of the map's columns.
            pos_y: ``[H]`` normalised y of the map's rows.

        Returns:
            ``(prior_row [..., h, Q, W], prior_col [..., h, Q, H])`` float32 logits (0 at
            the point).
        """
        inv_var = torch.exp(-2.0 * self.log_sigma.float())[:, None, None] * 0.5  # [h, 1, 1]
        anchors = anchors.float()
        dx = anchors[..., 0, None] - pos_x.float()  # [..., Q, W]
        dy = anchors[..., 1, None] - pos_y.float()  # [..., Q, H]
        return -(dx**2).unsqueeze(-3) * inv_var, -(dy**2).unsqueeze(-3) * inv_var
