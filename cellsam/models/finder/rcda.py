"""Row-column decoupled attention (RCDA), Anchor DETR's memory-light attention.

Full attention of ``Q`` queries over an ``H x W`` map costs a ``[Q, H*W]`` weight matrix per
head. RCDA replaces it by the outer product of a row softmax ``[Q, W]`` (over x) and a
column softmax ``[Q, H]`` (over y), with keys averaged along the other axis:

    out[q] = sum_{y, x} a_col[q, y] * a_row[q, x] * v[y, x]

Contracting one axis at a time never builds ``[Q, H, W]``: contracting the longer axis
first leaves an intermediate ``[Q, min(H, W), head_dim]`` per head, which for the paper's
64 x 64 map and 32-dim heads is half the size of the full weight matrix it replaces. Maps no
wider than a head (the tiny model's) use the full weights, which are then no larger.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiheadRCDA", "rcda_combine"]


def rcda_combine(attn_row: Tensor, attn_col: Tensor, value: Tensor) -> Tensor:
    """Apply decoupled attention weights to values.

    Args:
        attn_row: ``[B, h, Q, W]`` weights over x (rows of the map are indexed by y).
        attn_col: ``[B, h, Q, H]`` weights over y.
        value: ``[B, h, H, W, d]`` per-head values.

    Returns:
        ``[B, h, Q, d]`` equal to ``einsum("bhqy,bhqx,bhyxd->bhqd")``.
    """
    b, h, height, width, d = value.shape
    q = attn_row.shape[2]
    if max(height, width) <= d:
        # Small maps (the tiny model's 16 x 16 with 16-dim heads): the full [Q, H*W] weights
        # are no larger than the two-step path's [Q, min(H, W), d] intermediate, and one
        # large matmul is far cheaper than B*h*Q tiny ones (README, Quickstart).
        weights = (attn_col.unsqueeze(-1) * attn_row.unsqueeze(-2)).reshape(b, h, q, -1)
        return torch.matmul(weights, value.reshape(b, h, height * width, d))
    if height < width:
        # Contract x first (one big matmul), keep [Q, H, d] (the shorter axis), then y.
        v = value.permute(0, 1, 3, 2, 4).reshape(b, h, width, height * d)
        partial = torch.matmul(attn_row, v).view(b, h, q, height, d)
        out = torch.matmul(attn_col.unsqueeze(-2), partial)  # [B, h, Q, 1, d]
    else:
        # Contract y first; keep [Q, W, d] (W <= H).
        v = value.reshape(b, h, height, width * d)
        partial = torch.matmul(attn_col, v).view(b, h, q, width, d)
        out = torch.matmul(attn_row.unsqueeze(-2), partial)
    return out.squeeze(-2)


class MultiheadRCDA(nn.Module):
    """Multi-head row-column decoupled attention.

    Five input projections (query-row, query-col, key-row, key-col, value) are stored in one
    ``in_proj_weight [5C, C]`` like Anchor DETR's module, so its Xavier init (over the
    stacked matrix) and its parameter names are reproduced.

    Keys come in already reduced along the other axis (``[B, W, C]`` and ``[B, H, C]``).
    Anchor DETR projects the full ``[B, H, W, C]`` key maps and then averages; averaging is
    linear so it commutes with the affine projection, and reducing first saves two
    ``H*W x C x C`` projections per layer. Callers average the (feature + position) map.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(5 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(5 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _project(self, x: Tensor, index: int) -> Tensor:
        """``[..., C] -> [..., C]`` with projection ``index`` of the five."""
        c = self.embed_dim
        sl = slice(index * c, (index + 1) * c)
        return F.linear(x, self.in_proj_weight[sl], self.in_proj_bias[sl])

    def _heads(self, x: Tensor) -> Tensor:
        """``[B, L, C] -> [B, h, L, d]``."""
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)

    def attention_weights(
        self,
        query_row: Tensor,
        query_col: Tensor,
        key_row: Tensor,
        key_col: Tensor,
        prior: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Row and column softmaxes (before dropout).

        Args:
            query_row: ``[B, Q, C]`` queries carrying x-position information.
            query_col: ``[B, Q, C]`` queries carrying y-position information.
            key_row: ``[B, W, C]`` keys averaged over y.
            key_col: ``[B, H, C]`` keys averaged over x.
            prior: optional ``(prior_row [h, Q, W], prior_col [h, Q, H])`` (or with a
                leading ``B``) added to the logits before the softmaxes (a spatial prior,
                see ``AnchorSpatialPrior``).

        Returns:
            ``(attn_row [B, h, Q, W], attn_col [B, h, Q, H])``.
        """
        scale = self.head_dim**-0.5
        q_row = self._heads(self._project(query_row, 0) * scale)
        q_col = self._heads(self._project(query_col, 1) * scale)
        k_row = self._heads(self._project(key_row, 2))
        k_col = self._heads(self._project(key_col, 3))
        logits_row = torch.matmul(q_row, k_row.transpose(-1, -2))
        logits_col = torch.matmul(q_col, k_col.transpose(-1, -2))
        if prior is not None:
            logits_row = logits_row + prior[0].to(logits_row.dtype)
            logits_col = logits_col + prior[1].to(logits_col.dtype)
        return logits_row.softmax(dim=-1), logits_col.softmax(dim=-1)

    def forward(
        self,
        query_row: Tensor,
        query_col: Tensor,
        key_row: Tensor,
        key_col: Tensor,
        value: Tensor,
        prior: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Attend ``Q`` queries over an ``H x W`` map.

        Args:
            query_row: ``[B, Q, C]``.
            query_col: ``[B, Q, C]``.
            key_row: ``[B, W, C]`` (map + x-embedding, averaged over y).
            key_col: ``[B, H, C]`` (map + y-embedding, averaged over x).
            value: ``[B, H, W, C]``.
            prior: optional additive logits, see ``attention_weights``.

        Returns:
            ``[B, Q, C]``.
        """
        b, height, width, c = value.shape
        attn_row, attn_col = self.attention_weights(query_row, query_col, key_row, key_col, prior)
        if self.training and self.dropout > 0:
            attn_row = F.dropout(attn_row, p=self.dropout)
            attn_col = F.dropout(attn_col, p=self.dropout)
        v = self._project(value, 4).view(b, height, width, self.num_heads, self.head_dim)
        v = v.permute(0, 3, 1, 2, 4)  # [B, h, H, W, d]
        out = rcda_combine(attn_row, attn_col, v)  # [B, h, Q, d]
        out = out.transpose(1, 2).reshape(b, -1, c)
        return self.out_proj(out)
