"""CellSAM: SAM's image-encoder trunk (ViT or TinyViT), CellFinder on its pre-neck features,
SAM's neck and decoder.


Plain `nn.Module`, no Lightning or Hydra: Lightning modules and the predictor both wrap it.
Boxes cross this module's boundary as `xyxy` pixels of the model input (`S x S`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from segment_anything.modeling import Sam
from torch import Tensor, nn

from cellsam.models.finder import CellFinder
from cellsam.models.sam import build_sam, decode_prompts, trunk_channels, trunk_features

#: Named trainable parts, so configs can list what trains (`stage.trainable`).
PARTS = ("trunk", "finder", "neck", "prompt_encoder", "mask_decoder")


class CellSAM(nn.Module):
    """SAM + CellFinder.

    With `shared_trunk` (the paper) CellFinder reads the same ViT as SAM's neck; without it
    (the released model) CellFinder has its own copy of the trunk, made at construction.
    """

    def __init__(self, sam: Sam, finder: CellFinder, shared_trunk: bool = True) -> None:
        super().__init__()
        self.sam = sam
        self.finder = finder
        self.shared_trunk = shared_trunk
        # A separate trunk starts as a copy of SAM's (same init / same checkpoint weights).
        self.finder_encoder = None if shared_trunk else copy.deepcopy(sam.image_encoder)
        if self.finder_encoder is not None:
            self.finder_encoder.neck = nn.Identity()  # only the trunk is used for detection

    @property
    def image_size(self) -> int:
        return int(self.sam.image_encoder.img_size)

    def normalize(self, images: Tensor) -> Tensor:
        """`[B, 3, S, S]` in [0, 1] -> the encoder's input (SAM: 0-255 scale standardised with
        ImageNet statistics; LiteMedSAM: unchanged; see `PIXEL_NORMS`)."""
        return (images * 255.0 - self.sam.pixel_mean) / self.sam.pixel_std

    def trunk(self, images: Tensor) -> Tensor:
        """`[B, 3, S, S]` in [0, 1] -> pre-neck features `[B, C, h, w]` (SAM's trunk: ViT-B
        768 x S/16 x S/16, TinyViT 320 x 64 x 64 at its released input size)."""
        return trunk_features(self.sam.image_encoder, self.normalize(images))

    def detection_features(self, images: Tensor) -> Tensor:
        """What CellFinder reads: the separate detection trunk's map when there is one, else
        `trunk(images)`."""
        if self.finder_encoder is not None:
            return trunk_features(self.finder_encoder, self.normalize(images))
        return self.trunk(images)

    def detect(self, images: Tensor, features: Tensor | None = None) -> dict[str, Any]:
        """CellFinder outputs for `[B, 3, S, S]` images (see `CellFinder.forward`).

        `features` (from `trunk`) is reused when the trunk is shared.
        """
        if features is None or self.finder_encoder is not None:
            features = self.detection_features(images)
        return self.finder(features)

    def embed(self, features: Tensor) -> Tensor:
        """Pre-neck features `[B, C, h, w]` -> image embeddings `[B, P, h, w]` (SAM's neck)."""
        return self.sam.image_encoder.neck(features)

    def decode(self, embedding: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """Decode box prompts against one image's embedding, all boxes in one batch.

        embedding: `[1, P, h, w]` or `[P, h, w]`; boxes: `[K, 4]` xyxy input pixels.
        Returns low-resolution mask logits `[K, 4h, 4w]` and predicted IoU `[K]`.
        """
        masks, iou = decode_prompts(self.sam, embedding, boxes=boxes)
        return masks[:, 0], iou[:, 0]

    def part_parameters(self, part: str) -> list[nn.Parameter]:
        """Parameters of a named part (`PARTS`); `trunk` covers both trunks when separate."""
        enc = self.sam.image_encoder
        if part == "trunk":
            neck = {id(p) for p in enc.neck.parameters()}
            params = [p for p in enc.parameters() if id(p) not in neck]
            if self.finder_encoder is not None:
                params += list(self.finder_encoder.parameters())
            return params
        if part == "neck":
            return list(enc.neck.parameters())
        if part == "finder":
            return list(self.finder.parameters())
        if part == "prompt_encoder":
            return list(self.sam.prompt_encoder.parameters())
        if part == "mask_decoder":
            return list(self.sam.mask_decoder.parameters())
        raise ValueError(f"unknown model part {part!r}; choose from {PARTS}")


def build_cellsam(
    sam: Mapping[str, Any], finder: Mapping[str, Any], shared_trunk: bool = True
) -> CellSAM:
    """Build CellSAM from plain settings: `sam` -> `build_sam(**sam)`, `finder` -> `CellFinder`.

    CellFinder's input width is the trunk's, taken from the built SAM (not from config).
    """
    sam_model = build_sam(**dict(sam))
    in_channels = trunk_channels(sam_model.image_encoder)
    return CellSAM(sam_model, CellFinder(in_channels=in_channels, **dict(finder)), shared_trunk)

