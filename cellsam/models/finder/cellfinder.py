"""CellFinder: the Anchor DETR cell detector that reads the ViT trunk's feature map."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cellsam.models.finder.anchor_detr import MLP, AnchorDetrTransformer
from cellsam.models.finder.position import inverse_sigmoid

__all__ = ["CellFinder", "group_norm_groups"]

# Initial bias of the (w, h) outputs before the sigmoid, as Anchor DETR: boxes start at
# sigmoid(-2) ~ 0.12 of the image side and shrink from there.
_INIT_WH_BIAS = -2.0


def group_norm_groups(num_channels: int, max_groups: int = 32) -> int:
    """Number of GroupNorm groups for ``num_channels``.

    Rule: the largest divisor of ``num_channels`` that is ``<= max_groups``. This is 32 for
    the paper's 256 channels (GroupNorm(32, 256), as Anchor DETR) and any multiple of 32,
    and degrades gracefully for small widths (64 -> 32, 48 -> 24, 20 -> 20).
    """
    for groups in range(min(max_groups, num_channels), 0, -1):
        if num_channels % groups == 0:
            return groups
    raise ValueError(f"num_channels must be positive, got {num_channels}")


class CellFinder(nn.Module):
    """Cell detector: input projection, Anchor DETR transformer, shared class and box heads.

    One class ("cell") scored with a sigmoid. Boxes are predicted relative to each query's
    anchor point: ``(cx, cy) = sigmoid(delta_xy + inverse_sigmoid(anchor))`` and
    ``(w, h) = sigmoid(delta_wh)``. The heads are shared by all decoder layers, so the
    auxiliary outputs supervise the same heads on intermediate states.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_dim: int = 256,
        ffn_dim: int = 1024,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        num_queries: int = 3500,
        num_patterns: int = 1,
        dropout: float = 0.0,
        position_init_gain: float = 1.0,
        spatial_prior: bool = False,
        anchor_init: str = "uniform",
        prior_prob: float = 0.01,
        aux_loss: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
        self.aux_loss = aux_loss
        self.input_proj = nn.Sequential(
            nn.Conv2d(in_channels, hidden_dim, kernel_size=1),
            nn.GroupNorm(group_norm_groups(hidden_dim), hidden_dim),
        )
        self.transformer = AnchorDetrTransformer(
            hidden_dim=hidden_dim,
            ffn_dim=ffn_dim,
            num_heads=num_heads,
            num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers,
            num_queries=num_queries,
            num_patterns=num_patterns,
            dropout=dropout,
            position_init_gain=position_init_gain,
            spatial_prior=spatial_prior,
            anchor_init=anchor_init,
        )
        self.class_embed = nn.Linear(hidden_dim, 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, num_layers=3)
        self._reset_parameters(prior_prob)

    def _reset_parameters(self, prior_prob: float) -> None:
        nn.init.xavier_uniform_(self.input_proj[0].weight, gain=1.0)
        nn.init.zeros_(self.input_proj[0].bias)
        # Focal-loss prior: every query starts at score prior_prob, so the ~3500 background
        # queries do not swamp the loss in the first iterations.
        nn.init.constant_(self.class_embed.bias, -math.log((1.0 - prior_prob) / prior_prob))
        # Zero last box layer: the first boxes sit exactly on the anchors.
        last = self.bbox_embed.layers[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        with torch.no_grad():
            last.bias[2:] = _INIT_WH_BIAS

    @property
    def num_queries(self) -> int:
        """Total number of queries Q (anchors x patterns)."""
        return self.transformer.num_total_queries

    def _boxes(self, hs: Tensor, refs: Tensor) -> Tensor:
        """``hs [..., Q, C]``, reference points ``refs [..., Q, 2]`` -> boxes ``[..., Q, 4]``."""
        delta = self.bbox_embed(hs)
        # Reference + offset and the sigmoid run in at least float32: in bf16 a centre near
        # 0.5 would be quantised to 2^-9 of the image (2 px at 1024) whatever the network says.
        dtype = torch.promote_types(delta.dtype, torch.float32)
        ref = inverse_sigmoid(refs.to(dtype))
        delta = delta.to(dtype)
        return torch.cat((delta[..., :2] + ref, delta[..., 2:]), dim=-1).sigmoid()

    def _heads(self, hs: Tensor, refs: Tensor) -> dict:
        """Layer states ``[L, B, Q, C]`` -> the last layer's outputs plus ``aux_outputs``."""
        if not self.aux_loss:
            hs, refs = hs[-1:], refs[-1:]
        logits, boxes = self.class_embed(hs), self._boxes(hs, refs)
        aux = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
        return {"pred_logits": logits[-1], "pred_boxes": boxes[-1], "aux_outputs": aux}

    def forward(self, features: Tensor) -> dict:
        """
        Args:
            features: ``[B, C_in, H, W]`` (the ViT trunk's pre-neck map, e.g.
                ``[B, 768, 64, 64]``).

        Returns:
            ``{"pred_logits": [B, Q, 1], "pred_boxes": [B, Q, 4] cxcywh in [0, 1],
            "aux_outputs": [{"pred_logits", "pred_boxes"}] * (num_decoder_layers - 1)}``
            with Q = num_queries * num_patterns; ``aux_outputs`` is an empty list when
            ``aux_loss`` is False (those layers' heads are then not evaluated). Boxes are
            float32 (or float64) even under bf16 autocast; logits keep the compute dtype.
        """
        hs, refs = self.transformer(self.input_proj(features))  # [L, B, Q, C], [L, B, Q, 2]
        return self._heads(hs, refs)
