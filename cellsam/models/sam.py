"""SAM builders on top of `segment_anything.modeling`, and official checkpoint loading.

The modules are segment-anything's own classes, so a model built here has exactly the
state-dict layout of the released checkpoints (`image_encoder.*`, `prompt_encoder.*`,
`mask_decoder.*`). Architecture constants live in `VARIANTS`; configs only choose a name.
`Sam.forward` runs under `torch.no_grad()`, so training code calls the parts directly:
`trunk_features` (pre-neck map), `image_encoder.neck`, `prompt_encoder`, `mask_decoder`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as checkpoint_block

from cellsam.models.vit_attention import ATTENTION_KINDS, use_vit_attention

# SAM normalises 0-255 RGB images with these ImageNet statistics.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamVariant:
    """Architecture constants of one SAM size."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden: int = 256


VARIANTS: dict[str, SamVariant] = {
    "vit_b": SamVariant(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamVariant(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamVariant(1280, 32, 16, (7, 15, 23, 31)),
    # Same classes at small sizes, for tests and the CPU quickstart (512 px in, 32x32 map;
    # the quickstart sets image_size 256).
    "tiny": SamVariant(
        embed_dim=96,
        depth=4,
        num_heads=4,
        global_attn_indexes=(1, 3),
        image_size=512,
        window_size=8,
        prompt_dim=64,
        decoder_mlp_dim=256,
        decoder_heads=4,
        iou_head_hidden=64,
    ),
}


class SamCheckpointError(RuntimeError):
    """A SAM checkpoint file does not fit the model; the message lists the differences."""


def build_sam(
    variant: str = "vit_b", checkpoint: str | Path | None = None, image_size: int | None = None,
    prompt_dim: int | None = None, attention: str = "standard",
    activation_checkpointing: bool = False,
) -> Sam:
    """Build SAM of a named size (`vit_b`, `vit_l`, `vit_h`, `tiny`), optionally loading weights.

    `image_size` overrides the variant's input size (the ViT's position embedding follows
    it, so an official checkpoint only loads at its own size). `prompt_dim` overrides the
    width of the neck's output, the prompt encoder and the mask decoder (for models trained
    from scratch; official checkpoints only load at their own, 256).
    `attention` chooses how the ViT computes attention: `"standard"` (segment-anything's
    code) or `"sdpa"` (`scaled_dot_product_attention` with the relative-position bias as a
    mask; same parameters and results, see `cellsam.models.vit_attention`).
    `activation_checkpointing` recomputes each ViT block in the backward pass instead of
    keeping its activations (`trunk_features`, training with gradients only).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown SAM variant {variant!r}; choose from {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    if image_size is not None:
        v = replace(v, image_size=int(image_size))
    if prompt_dim is not None:
        step = math.lcm(8, 2 * v.decoder_heads)
        if int(prompt_dim) < step or int(prompt_dim) % step:
            # The decoder's upscaled map has prompt_dim / 8 channels, and its cross-attention
            # splits prompt_dim / 2 over the heads.
            raise ValueError(f"prompt_dim must be a positive multiple of {step} for SAM "
                             f"{variant} ({v.decoder_heads} decoder heads), got {prompt_dim}")
        v = replace(v, prompt_dim=int(prompt_dim))
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"unknown ViT attention {attention!r}; choose from {ATTENTION_KINDS}")
    if v.image_size % v.patch_size:
        raise ValueError(f"image_size {v.image_size} is not a multiple of patch {v.patch_size}")
    grid = v.image_size // v.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=v.depth,
            embed_dim=v.embed_dim,
            img_size=v.image_size,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=v.num_heads,
            patch_size=v.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=v.global_attn_indexes,
            window_size=v.window_size,
            out_chans=v.prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=v.prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(v.image_size, v.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=v.decoder_depth,
                embedding_dim=v.prompt_dim,
                mlp_dim=v.decoder_mlp_dim,
                num_heads=v.decoder_heads,
            ),
            transformer_dim=v.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=v.iou_head_hidden,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    if checkpoint:
        load_sam_checkpoint(sam, checkpoint)
    else:
        warnings.warn(
            f"SAM {variant}: no checkpoint given, the ViT starts from random weights "
            "(set model.sam.checkpoint=/path/sam_vit_b_01ec64.pth to start from SAM)",
            stacklevel=2,
        )
    # Both switches leave the parameters and state-dict keys alone, so they apply after
    # the weights are in.
    use_vit_attention(sam.image_encoder, attention)
    sam.image_encoder.activation_checkpointing = bool(activation_checkpointing)
    return sam


def _describe(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_sam_checkpoint(sam: Sam, path: str | Path) -> None:
    """Load an official SAM state dict (e.g. `sam_vit_b_01ec64.pth`) into `sam`, strictly.

    Raises `SamCheckpointError` naming the file and listing missing keys, unexpected keys
    and shape mismatches, so a wrong variant or a truncated file is obvious.
    """
    path = Path(path)
    if not path.is_file():
        raise SamCheckpointError(f"{path}: SAM checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise SamCheckpointError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # some re-saved checkpoints nest the weights
    if not isinstance(state, dict):
        raise SamCheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    own = sam.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = [f"{path}: does not match this SAM model"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_describe(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_describe(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_describe(mismatched)}")
        raise SamCheckpointError("\n  ".join(parts))
    sam.load_state_dict(state, strict=True)


def trunk_features(encoder: ImageEncoderViT, images: Tensor) -> Tensor:
    """The ViT trunk's pre-neck feature map.

    images: `[B, 3, S, S]` already normalised -> `[B, C, S/16, S/16]` (C = 768 for ViT-B).
    With `encoder.activation_checkpointing` set (`build_sam`), each block is recomputed in
    the backward pass, when the encoder is training and gradients are on.
    """
    x = encoder.patch_embed(images)  # [B, h, w, C]
    if encoder.pos_embed is not None:
        x = x + encoder.pos_embed
    recompute = (
        getattr(encoder, "activation_checkpointing", False)
        and encoder.training
        and torch.is_grad_enabled()
    )
    for block in encoder.blocks:
        x = checkpoint_block(block, x, use_reentrant=False) if recompute else block(x)
    return x.permute(0, 3, 1, 2)

