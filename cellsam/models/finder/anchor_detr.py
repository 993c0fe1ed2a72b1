"""Anchor DETR transformer (single feature level, no padding) for CellFinder.

Behaviour follows Anchor DETR (Wang et al., AAAI 2022): post-norm layers; RCDA
self-attention in the encoder; in the decoder standard self-attention among queries,
then RCDA cross-attention to the encoder memory, then an FFN. Queries are
``num_patterns x num_queries``: every learned anchor point (x, y) in [0, 1] is paired with
every pattern embedding. In the original, anchors do not move between decoder layers, so
their position embeddings are computed once per forward.

One hook, off in the paper's model: ``spatial_prior`` adds a Gaussian bias around each
anchor to the decoder's cross-attention logits (``spatial_prior.py``, after SMCA-DETR).
One init knob: ``position_init_gain`` scales the position adapters' last layer at init
(1.0, the default, is the original's init; ``model=tiny`` uses 10).

Parameter names (``position``, ``pattern``, ``adapt_pos1d``, ``adapt_pos2d``,
``encoder_layers.i.self_attn.in_proj_weight``, ``decoder_layers.i.cross_attn``, ``norm1``,
``ffn.linear1``, ...) mirror the original so that its checkpoints map over by renaming only.
Internally maps are channels-last ``[B, H, W, C]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cellsam.models.finder.position import feature_positions, pos2posemb1d, pos2posemb2d
from cellsam.models.finder.rcda import MultiheadRCDA
from cellsam.models.finder.spatial_prior import AnchorSpatialPrior

__all__ = [
    "FFN",
    "init_anchor_points",
    "MLP",
    "AnchorDetrTransformer",
    "DecoderLayer",
    "EncoderLayer",
    "MultiheadSelfAttention",
]


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them: ``[..., in] -> [..., out]``."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class FFN(nn.Module):
    """Post-norm feed-forward block: ``norm(x + W2 relu(W1 x))``, ``[..., C] -> [..., C]``."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear2(self.dropout2(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout3(y))


class MultiheadSelfAttention(nn.Module):
    """Standard multi-head self-attention through ``F.scaled_dot_product_attention``.

    Same parameters and init as ``nn.MultiheadAttention`` (Xavier over the stacked
    ``in_proj_weight [3C, C]``, zero biases), but batch-first and always on the fused
    kernel: with thousands of queries an explicit weight matrix would be queries^2 x heads
    floats per image per layer, which the flash / memory-efficient kernels never build.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query_key: Tensor, value: Tensor) -> Tensor:
        """``query_key [B, L, C]`` (content + position), ``value [B, L, C]`` -> ``[B, L, C]``."""
        b, length, c = value.shape
        h = self.num_heads
        qk = F.linear(query_key, self.in_proj_weight[: 2 * c], self.in_proj_bias[: 2 * c])
        v = F.linear(value, self.in_proj_weight[2 * c :], self.in_proj_bias[2 * c :])
        q, k = qk.view(b, length, 2, h, c // h).permute(2, 0, 3, 1, 4)  # 2 x [B, h, L, d]
        v = v.view(b, length, h, c // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, length, c))


class EncoderLayer(nn.Module):
    """RCDA self-attention over the map, then FFN (post-norm)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = MultiheadRCDA(dim, num_heads, dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim, dropout)

    def forward(self, src: Tensor, posemb_row: Tensor, posemb_col: Tensor) -> Tensor:
        """
        Args:
            src: ``[B, H, W, C]`` map.
            posemb_row: ``[W, C]`` embedding of each column's x.
            posemb_col: ``[H, C]`` embedding of each row's y.

        Returns:
            ``[B, H, W, C]``.
        """
        b, h, w, c = src.shape
        query_row = (src + posemb_row).reshape(b, h * w, c)
        query_col = (src + posemb_col[:, None]).reshape(b, h * w, c)
        # Averaging before projecting: see MultiheadRCDA. The position term is constant
        # along the averaged axis, so it is added after the mean.
        key_row = src.mean(dim=1) + posemb_row  # [B, W, C]
        key_col = src.mean(dim=2) + posemb_col  # [B, H, C]
        out = self.self_attn(query_row, query_col, key_row, key_col, src).view(b, h, w, c)
        src = self.norm1(src + self.dropout1(out))
        return self.ffn(src)


class DecoderLayer(nn.Module):
    """Self-attention among queries, RCDA cross-attention to the memory, FFN (post-norm)."""

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        spatial_prior: bool = False,
    ) -> None:
        super().__init__()
        self.cross_attn = MultiheadRCDA(dim, num_heads, dropout)
        self.spatial_prior = AnchorSpatialPrior(num_heads) if spatial_prior else None
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = MultiheadSelfAttention(dim, num_heads, dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim, dropout)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        query_pos_x: Tensor,
        query_pos_y: Tensor,
        memory: Tensor,
        key_row: Tensor,
        key_col: Tensor,
        geometry: tuple[Tensor, Tensor, Tensor],
    ) -> Tensor:
        """
        Args:
            tgt: ``[B, Q, C]`` query content.
            query_pos: ``[Q, C]`` 2-D anchor embedding (self-attention).
            query_pos_x: ``[Q, C]`` x embedding (row attention).
            query_pos_y: ``[Q, C]`` y embedding (column attention).
            memory: ``[B, H, W, C]`` encoder output (values).
            key_row: ``[B, W, C]`` memory averaged over y, plus x-embedding.
            key_col: ``[B, H, C]`` memory averaged over x, plus y-embedding.
            geometry: ``(ref [Q, 2], pos_x [W], pos_y [H])`` for the spatial prior.

        Returns:
            ``[B, Q, C]``.
        """
        tgt2 = self.self_attn(tgt + query_pos, tgt)
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        prior = None if self.spatial_prior is None else self.spatial_prior(*geometry)
        tgt2 = self.cross_attn(
            tgt + query_pos_x, tgt + query_pos_y, key_row, key_col, memory, prior
        )
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        return self.ffn(tgt)


def init_anchor_points(points: Tensor, mode: str) -> None:
    """Fill ``points [N, 2]`` in place: ``uniform`` random in [0, 1]^2, or ``grid``.

    ``grid`` puts the points at the cell centres of a ``g x g`` grid, which needs
    N = g^2 (e.g. 100, 144, 3481).
    """
    n = points.shape[0]
    with torch.no_grad():
        if mode == "uniform":
            points.uniform_(0.0, 1.0)
        elif mode == "grid":
            g = round(n**0.5)
            if g * g != n:
                raise ValueError(f"anchor_init='grid' needs a square number of queries, got {n}")
            axis = feature_positions(g, points.device)
            yy, xx = torch.meshgrid(axis, axis, indexing="ij")
            points.copy_(torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1).to(points.dtype))
        else:
            raise ValueError(f"anchor_init must be 'uniform' or 'grid', got {mode!r}")


class AnchorDetrTransformer(nn.Module):
    """Encoder + decoder with learned anchor points and pattern embeddings.

    Query ``i = p * num_queries + n`` pairs pattern ``p`` with anchor ``n``, as the
    original orders them.
    """

    def __init__(
        self,
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
    ) -> None:
        super().__init__()
        if hidden_dim % 4:
            # 2-D anchor embedding = two 1-D sin/cos embeddings of hidden_dim / 2 each.
            raise ValueError(f"hidden_dim must be a multiple of 4, got {hidden_dim}")
        if num_decoder_layers < 1:
            raise ValueError("num_decoder_layers must be >= 1")
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.num_patterns = num_patterns
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(hidden_dim, ffn_dim, num_heads, dropout) for _ in range(num_encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(hidden_dim, ffn_dim, num_heads, dropout, spatial_prior)
            for _ in range(num_decoder_layers)
        )
        self.position = nn.Embedding(num_queries, 2)  # anchor points (x, y)
        self.pattern = nn.Embedding(num_patterns, hidden_dim)
        self.adapt_pos1d = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim)
        )
        self.adapt_pos2d = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim)
        )
        # Anchors spread uniformly at random over the image (the original), or on a regular
        # grid, which leaves no part of the image far from an anchor; other weights keep
        # the original's init (PyTorch defaults, Xavier inside the attention modules).
        init_anchor_points(self.position.weight, anchor_init)
        # At init every query has the same content, so queries differ only through their
        # anchor's position embedding; with PyTorch's default init that term is small and
        # training sits on a plateau (all queries alike) before it grows. A gain > 1 on the
        # adapters' last layer shortens that plateau (README, Quickstart); 1.0 keeps the
        # original initialisation.
        with torch.no_grad():
            for adapter in (self.adapt_pos1d, self.adapt_pos2d):
                adapter[-1].weight.mul_(position_init_gain)

    @property
    def num_total_queries(self) -> int:
        return self.num_queries * self.num_patterns

    def anchors(self) -> Tensor:
        """``[Q, 2]`` anchor point (x, y) of every query, Q = num_patterns * num_queries."""
        return self.position.weight.repeat(self.num_patterns, 1)

    def _embed1d(self, pos: Tensor) -> Tensor:
        """``[...]`` coordinates -> ``[..., C]`` adapted 1-D embedding in the weights' dtype."""
        raw = pos2posemb1d(pos, self.hidden_dim)
        return self.adapt_pos1d(raw.to(self.adapt_pos1d[0].weight.dtype))

    def query_embeddings(self, ref: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Reference points ``[..., Q, 2]`` -> 2-D, x and y embeddings, each ``[..., Q, C]``."""
        c = self.hidden_dim
        emb_dtype = self.adapt_pos2d[0].weight.dtype
        query_pos = self.adapt_pos2d(pos2posemb2d(ref, c // 2).to(emb_dtype))
        query_pos_xy = self._embed1d(ref.movedim(-1, 0))  # [2, ..., Q, C]: x then y
        return query_pos, query_pos_xy[0], query_pos_xy[1]

    def forward(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            src: ``[B, C, H, W]`` projected features (C = hidden_dim).

        Returns:
            ``(hs [L, B, Q, C], refs [L, B, Q, 2])``: the output of every decoder layer
            (L = num_decoder_layers, last one last) and the reference point (x, y) each
            layer's queries used (the anchors, the same for every layer).
        """
        b, c, h, w = src.shape
        memory = src.permute(0, 2, 3, 1).contiguous()  # [B, H, W, C]

        # One MLP call for both axes: x of every column, then y of every row.
        pos_x, pos_y = feature_positions(w, src.device), feature_positions(h, src.device)
        posemb = self._embed1d(torch.cat((pos_x, pos_y)))
        posemb_row, posemb_col = posemb[:w], posemb[w:]  # [W, C], [H, C]
        for layer in self.encoder_layers:
            memory = layer(memory, posemb_row, posemb_col)

        # The memory is the same for every decoder layer, so its axis means are taken once.
        key_row, key_col = memory.mean(dim=1) + posemb_row, memory.mean(dim=2) + posemb_col
        ref = self.anchors()  # [Q, 2]
        embeddings = self.query_embeddings(ref)
        per_pattern = ref.shape[0] // self.num_patterns
        pattern = self.pattern.weight.repeat_interleave(per_pattern, dim=0)  # [Q, C]
        tgt = pattern.unsqueeze(0).expand(b, -1, -1)
        states = []
        for layer in self.decoder_layers:
            tgt = layer(tgt, *embeddings, memory, key_row, key_col, (ref, pos_x, pos_y))
            states.append(tgt)
        hs = torch.stack(states)
        return hs, ref.expand(len(states), b, -1, -1)
