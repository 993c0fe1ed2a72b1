"""SAM ViT attention through `torch.nn.functional.scaled_dot_product_attention`.

segment-anything's `Attention` builds the full `[B*heads, N, N]` score matrix, adds the
decomposed relative-position bias to it and runs softmax and the value product as separate
ops. `SdpaAttention` computes the same thing with one `scaled_dot_product_attention` call,
passing the relative-position bias as an additive float `attn_mask`, so PyTorch's fused
(memory-efficient / cuDNN) kernels apply on GPU. Without relative positions no mask is
passed and the flash kernel can apply too.

`SdpaAttention` subclasses segment-anything's `Attention` and only overrides `forward`:
the parameters (`qkv`, `proj`, `rel_pos_h`, `rel_pos_w`) and therefore the state-dict keys
are the same, so SAM checkpoints and cellsam checkpoints load either way.
`use_vit_attention(encoder, "sdpa")` switches an already built encoder (after its weights
are loaded) by changing each block's attention class in place; `"standard"` switches back.
Windowed and global blocks both go through `Attention.forward` with `[B', H, W, C]` input
(the block does the window partition), so one forward covers both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import Tensor, nn

ATTENTION_KINDS = ("standard", "sdpa")


def decomposed_rel_pos_bias(
    q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, size: tuple[int, int]
) -> Tensor:
    """The additive bias that segment-anything's `add_decomposed_rel_pos` adds to the scores.

    q: `[B, heads, H*W, C]` (unscaled, as SAM uses it) -> `[B, heads, H*W, H*W]`.
    Queries and keys share one grid here (SAM's image encoder never differs).
    """
    h, w = size
    rh = get_rel_pos(h, h, rel_pos_h)  # [h, h, C]
    rw = get_rel_pos(w, w, rel_pos_w)  # [w, w, C]
    b, heads, n, c = q.shape
    r_q = q.reshape(b, heads, h, w, c)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)  # [B, heads, h, w, kh]
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)  # [B, heads, h, w, kw]
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # [B, heads, h, w, kh, kw]
    return bias.reshape(b, heads, n, n)


class SdpaAttention(Attention):
    """segment-anything's `Attention` with the same parameters, computed by SDPA."""

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        n = h * w
        # [3, B, heads, N, C]
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        mask = None
        if self.use_rel_pos:
            mask = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w))
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        out = out.permute(0, 2, 1, 3).reshape(b, h, w, -1)  # [B, N, heads, C] -> [B, H, W, D]
        return self.proj(out)


def use_vit_attention(module: nn.Module, kind: str) -> nn.Module:
    """Make every SAM ViT attention in `module` compute by `kind` (`ATTENTION_KINDS`).

    Changes the classes in place (parameters, buffers and state-dict keys stay as they are)
    and returns `module`.
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown ViT attention {kind!r}; choose from {ATTENTION_KINDS}")
    target = SdpaAttention if kind == "sdpa" else Attention
    for sub in module.modules():
        if isinstance(sub, Attention):  # SdpaAttention is one too
            sub.__class__ = target
    return module
