"""Segment Any Cell (SAC; Na et al., arXiv 2401.13220; REFERENCE section 7): SAM with LoRA
on the image encoder's query/value projections, prompted with points by an auto-prompt
network (the prompter) instead of a detector.

Plain `nn.Module`, no Lightning or Hydra. Points cross this module's boundary as `(x, y)`
model-input pixels with pixel centres at integers (SAM's prompt encoder adds the half pixel
itself), boxes as `xyxy` model-input pixels, as in `cellsam.models.cellsam.CellSAM`.

The base SAM's weights are frozen and come from a file (or a package), so a SAC
checkpoint stores only what differs from that base; `base_identity` names the base and
its sha256, which loading compares (`cellsam.utils.checkpoint`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segment_anything.modeling import Sam
from torch import Tensor, nn

from cellsam.models.checkpoints import PACKAGED, PACKAGED_CHECKPOINT
from cellsam.models.lora import apply_lora, file_sha256, lora_parameters
from cellsam.models.prompter import FeatureHeadPrompter, UNetPrompter
from cellsam.models.sam import (
    VARIANTS,
    build_sam,
    decode_prompts,
    trunk_channels,
    trunk_features,
)

#: Named trainable parts, so configs can list what trains (`stage.module.trainable`).
SAC_PARTS = ("lora", "neck", "prompt_encoder", "mask_decoder", "prompter")
#: What the prompter reads: the image (a separate U-Net, as SAC) or the trunk's features.
PROMPTER_INPUTS = ("image", "features")


def base_identity(variant: str, checkpoint: str | Path | None) -> dict[str, str] | None:
    """Name and sha256 of the base SAM weights (None: random weights, nothing to name).

    `packaged` weights are named by the sha256 the package is checked against on loading.
    """
    if not checkpoint:
        return None
    if checkpoint == PACKAGED_CHECKPOINT:
        name = VARIANTS[variant].packaged
        if name is None:
            raise ValueError(f"SAM {variant}: no packaged weights")
        entry = PACKAGED[name]
        return {"source": f"{PACKAGED_CHECKPOINT}:{name}", "file": entry.resource[-1],
                "sha256": entry.sha256}
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.sam.checkpoint={checkpoint}: file not found")
    return {"source": str(path), "file": path.name, "sha256": file_sha256(path)}


class SAC(nn.Module):
    """SAM (optionally LoRA-adapted) + a prompter producing `foreground` / `centre` maps.

    `prompter_input`: `image` (the prompter sees `[B, 3, S, S]` images in [0, 1]) or
    `features` (it sees the trunk's pre-neck map, detached: it is a head, not a trainer of
    the trunk). `base` is `base_identity` of the SAM weights the model was built on.
    """

    def __init__(self, sam: Sam, prompter: nn.Module, prompter_input: str,
                 base: dict[str, str] | None = None) -> None:
        super().__init__()
        if prompter_input not in PROMPTER_INPUTS:
            raise ValueError(f"prompter input {prompter_input!r}: choose from {PROMPTER_INPUTS}")
        self.sam = sam
        self.prompter = prompter
        self.prompter_input = prompter_input
        self.base = base

    @property
    def image_size(self) -> int:
        return int(self.sam.image_encoder.img_size)

    @property
    def has_lora(self) -> bool:
        return bool(lora_parameters(self.sam.image_encoder))

    def normalize(self, images: Tensor) -> Tensor:
        """`[B, 3, S, S]` in [0, 1] -> the encoder's input (see `CellSAM.normalize`)."""
        return (images * 255.0 - self.sam.pixel_mean) / self.sam.pixel_std

    def trunk(self, images: Tensor) -> Tensor:
        """`[B, 3, S, S]` in [0, 1] -> pre-neck features `[B, C, h, w]` (LoRA included)."""
        return trunk_features(self.sam.image_encoder, self.normalize(images))

    def embed(self, features: Tensor) -> Tensor:
        """Pre-neck features `[B, C, h, w]` -> image embeddings `[B, P, h, w]` (SAM's neck)."""
        return self.sam.image_encoder.neck(features)

    def prompt_maps(self, images: Tensor | None, features: Tensor | None = None
                    ) -> dict[str, Tensor]:
        """Prompter logits `foreground` and `centre`, `[B, 1, S, S]` each.

        images: `[B, 3, S, S]` in [0, 1]; features: the trunk's `[B, C, h, w]` (computed
        from `images` when the prompter reads features and none are given).
        """
        if self.prompter_input == "image":
            if images is None:
                raise ValueError("this SAC's prompter reads images; none were given")
            return self.prompter(images)
        if features is None:
            if images is None:
                raise ValueError("prompt_maps needs images or trunk features")
            features = self.trunk(images)
        return self.prompter(features.detach())

    def decode_points(self, embedding: Tensor, points: Tensor, labels: Tensor,
                      boxes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Decode N point prompts against one image's embedding, all in one batch.

        embedding: `[1, P, h, w]` or `[P, h, w]`; points: `[N, K, 2]` (x, y) input pixels;
        labels: `[N, K]` (1 positive, 0 negative, -1 padding: SAM's "not a point");
        boxes: `[N, 4]` xyxy input pixels or None.
        Returns low-resolution mask logits `[N, 4h, 4w]` and predicted IoU `[N]`.
        """
        if points.shape[:2] != labels.shape:
            raise ValueError(f"points {tuple(points.shape)} and labels {tuple(labels.shape)} "
                             "disagree (expected [N, K, 2] and [N, K])")
        masks, iou = decode_prompts(self.sam, embedding,
                                    points=(points.float(), labels.to(points.device)),
                                    boxes=boxes)
        return masks[:, 0], iou[:, 0]

    def decode_unprompted(self, embedding: Tensor) -> tuple[Tensor, Tensor]:
        """SAM's decoder with no prompt at all (its no-mask dense embedding only): one mask
        logit map `[1, 4h, 4w]` and predicted IoU `[1]` for one image's embedding `[1, P, h,
        w]`. What fine-tuning without prompts trains (an ablation of SAC)."""
        masks, iou = decode_prompts(self.sam, embedding)
        return masks[:, 0], iou[:, 0]

    def part_parameters(self, part: str) -> list[nn.Parameter]:
        """Parameters of a named part (`SAC_PARTS`)."""
        enc = self.sam.image_encoder
        if part == "lora":
            return [p for _, p in lora_parameters(enc)]
        if part == "neck":
            return list(enc.neck.parameters())
        if part == "prompt_encoder":
            return list(self.sam.prompt_encoder.parameters())
        if part == "mask_decoder":
            return list(self.sam.mask_decoder.parameters())
        if part == "prompter":
            return list(self.prompter.parameters())
        raise ValueError(f"unknown SAC part {part!r}; choose from {SAC_PARTS}")


def build_sac(sam: Mapping[str, Any], lora: Mapping[str, Any] | None,
              prompter: Mapping[str, Any]) -> SAC:
    """Build SAC from plain settings.

    sam: `build_sam` arguments (as CellSAM's `model.sam`); lora: `apply_lora` arguments
    (`rank`, `alpha`, `dropout`, `blocks`: null for all attention blocks) or None for no
    adapters (decoder-only fine-tuning); prompter: `input` (`image` | `features`) and the
    network's sizes (`base_channels`, `depth` for the U-Net on images; `hidden` for the
    head on features). The prompter's input width and output size come from the built SAM.
    """
    sam_cfg = dict(sam)
    identity = base_identity(str(sam_cfg.get("variant", "vit_b")), sam_cfg.get("checkpoint"))
    sam_model = build_sam(**sam_cfg)
    if lora is not None:
        apply_lora(sam_model.image_encoder, **dict(lora))
    p = dict(prompter)
    kind = p.pop("input", None)
    if kind == "image":
        net: nn.Module = UNetPrompter(in_channels=3, **p)
    elif kind == "features":
        net = FeatureHeadPrompter(in_channels=trunk_channels(sam_model.image_encoder),
                                  out_size=int(sam_model.image_encoder.img_size), **p)
    else:
        raise ValueError(f"model.prompter.input={kind!r}: choose from {PROMPTER_INPUTS}")
    return SAC(sam_model, net, kind, identity)


def key_part(key: str) -> str:
    """The part (`SAC_PARTS`) a key of `SAC.state_dict()` belongs to, or `base` for the
    frozen SAM weights a base checkpoint supplies (trunk, and SAM parts never trained)."""
    if key.rsplit(".", 1)[-1].startswith("lora_"):
        return "lora"
    for part, prefix in (("prompter", "prompter."), ("neck", "sam.image_encoder.neck."),
                         ("prompt_encoder", "sam.prompt_encoder."),
                         ("mask_decoder", "sam.mask_decoder.")):
        if key.startswith(prefix):
            return part
    return "base"
