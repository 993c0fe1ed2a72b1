"""Sine embeddings of normalised coordinates, as Anchor DETR uses them.

Anchor DETR embeds *coordinates* (not grid indices): a feature-map row or column, or a
query's anchor point, is a number in [0, 1] that is scaled by 2*pi and expanded into
sin/cos pairs of geometrically spaced frequencies. Feature positions and anchors therefore
live in the same space, which is what lets a query attend to "its" part of the image.
Learned MLPs (in the transformer) then adapt these fixed embeddings.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["feature_positions", "inverse_sigmoid", "pos2posemb1d", "pos2posemb2d"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Sin/cos of 2*pi*x / 10000^k need more than bf16/fp16 mantissa to tell neighbouring
    # rows apart, so they are always computed in at least float32.
    return torch.promote_types(dtype, torch.float32)


def pos2posemb1d(pos: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Embed scalar coordinates.

    Args:
        pos: ``[...]`` coordinates, normally in [0, 1].
        num_feats: embedding size (even).
        temperature: base of the geometric frequency progression.

    Returns:
        ``[..., num_feats]`` in ``promote(pos.dtype, float32)``, interleaved
        ``sin(2*pi*x / t_0), cos(2*pi*x / t_0), sin(2*pi*x / t_1), ...`` with
        ``t_k = temperature ** (2k / num_feats)``.
    """
    if num_feats % 2:
        raise ValueError(f"num_feats must be even, got {num_feats}")
    dtype = _compute_dtype(pos.dtype)
    k = torch.arange(num_feats // 2, dtype=dtype, device=pos.device)
    inv_freq = temperature ** (-2.0 * k / num_feats)  # [F/2]
    angles = pos.to(dtype)[..., None] * (2.0 * math.pi) * inv_freq  # [..., F/2]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


def pos2posemb2d(pos: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Embed 2-D points ``(x, y)``.

    Args:
        pos: ``[..., 2]`` points (x, y), normally in [0, 1].
        num_feats: size of each coordinate's embedding (even).
        temperature: see ``pos2posemb1d``.

    Returns:
        ``[..., 2 * num_feats]``: the y embedding followed by the x embedding (Anchor
        DETR's order).
    """
    emb_x = pos2posemb1d(pos[..., 0], num_feats, temperature)
    emb_y = pos2posemb1d(pos[..., 1], num_feats, temperature)
    return torch.cat((emb_y, emb_x), dim=-1)


def feature_positions(length: int, device: torch.device | None = None) -> Tensor:
    """Normalised centres of ``length`` cells of a feature-map axis: ``[length]`` float32.

    ``(i + 0.5) / length``, matching the anchor space [0, 1]; the same as Anchor DETR's
    ``mask2pos`` for an unpadded map (the only case here: the ViT input is always resized
    to a fixed square).
    """
    return (torch.arange(length, dtype=torch.float32, device=device) + 0.5) / length


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped into [0, 1] and both terms to ``>= eps``.

    Learned anchors can drift outside (0, 1) during training; the clamps keep the box
    parameterisation finite. Shape and dtype are preserved.
    """
    x = x.clamp(min=0.0, max=1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))
