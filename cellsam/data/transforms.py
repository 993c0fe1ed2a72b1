"""Training augmentation that moves image and label together, and target building.

Works on torch tensors: image `[3, H, W]` float in [0, 1], label `[H, W]` int64. Geometric
steps (flips, 90-degree rotations, zoom with crop/pad) are applied identically to both;
photometric steps (gamma, noise, blur) touch the image only and keep empty channels empty.
Random numbers come from torch's global generator, which Lightning seeds per worker.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from cellsam.ops.boxes import box_xyxy_to_cxcywh
from cellsam.ops.masks import label_boxes_xyxy


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges; a probability of 0 (or `rot90=False`) switches a step off.
    The values of a run live in the data config (`conf/data/base.yaml`, `augment`)."""

    hflip: float
    vflip: float
    rot90: bool
    zoom: tuple[float, float]
    zoom_p: float
    gamma: tuple[float, float]
    gamma_p: float
    noise_std: float
    noise_p: float
    blur_sigma: tuple[float, float]
    blur_p: float

    @classmethod
    def from_config(cls, block: dict) -> AugmentConfig:
        """From a config block (lists become tuples); every key must be given."""
        missing = sorted({f.name for f in fields(cls)} - set(block))
        unknown = sorted(set(block) - {f.name for f in fields(cls)})
        if missing or unknown:
            raise ValueError(f"data.augment: missing keys {missing}, unknown keys {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in block.items()})


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def _chance(p: float) -> bool:
    return p > 0 and float(torch.rand(())) < p


def zoom_crop(
    image: torch.Tensor, label: torch.Tensor, factor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale by `factor` then randomly crop (zoom in) or zero-pad (zoom out) back to `[H, W]`."""
    _, h, w = image.shape
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    img = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    lab = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].long()
    out_img, out_lab = image.new_zeros(image.shape), label.new_zeros(label.shape)
    if nh >= h:  # crop
        y = int(torch.randint(0, nh - h + 1, ()))
        x = int(torch.randint(0, nw - w + 1, ()))
        return img[:, y : y + h, x : x + w].contiguous(), lab[y : y + h, x : x + w].contiguous()
    y = int(torch.randint(0, h - nh + 1, ()))
    x = int(torch.randint(0, w - nw + 1, ()))
    out_img[:, y : y + nh, x : x + nw] = img
    out_lab[y : y + nh, x : x + nw] = lab
    return out_img, out_lab


def geometric(
    image: torch.Tensor, label: torch.Tensor, cfg: AugmentConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips, 90-degree rotation and zoom of `image [3, H, W]` and `label [H, W]`
    together (square inputs)."""
    if _chance(cfg.hflip):
        image, label = image.flip(-1), label.flip(-1)
    if _chance(cfg.vflip):
        image, label = image.flip(-2), label.flip(-2)
    if cfg.rot90:
        k = int(torch.randint(0, 4, ()))
        image, label = torch.rot90(image, k, (-2, -1)), torch.rot90(label, k, (-2, -1))
    if _chance(cfg.zoom_p):
        image, label = zoom_crop(image, label, _uniform(*cfg.zoom))
    return image, label


def photometric(image: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Random gamma, blur and noise of `image [3, H, W]`, clamped to [0, 1]; channels that
    are blank stay blank. Works at any resolution (the data module runs it at the smaller
    of the stored and the model's input size, where it is cheapest)."""
    present = image.flatten(1).amax(1) > 0
    if _chance(cfg.gamma_p):
        image = image.clamp_min(0) ** _uniform(*cfg.gamma)
    if _chance(cfg.blur_p):
        sigma = _uniform(*cfg.blur_sigma)
        k = 2 * int(3 * sigma) + 1
        image = gaussian_blur(image, [k, k], [sigma, sigma])
    if _chance(cfg.noise_p):
        image = image + cfg.noise_std * torch.randn_like(image)
    return (image * present[:, None, None]).clamp(0, 1)


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """`[3, H, W]` -> `[3, S, S]` at the model's input size (antialiased bilinear)."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image.contiguous()
    resized = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)[0]
    return resized.clamp(0, 1)


def augment(
    image: torch.Tensor, label: torch.Tensor, cfg: AugmentConfig, input_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random training augmentation, as the data module makes it: `image [3, H, W]` ->
    `[3, S, S]` at the model's `input_size`, `label [H, W]` kept at the stored size.

    `geometric` on both, then `photometric` on the image at the smaller of the stored and
    the input size (when the model downsizes, the photometric steps cost less there).
    """
    image, label = geometric(image, label, cfg)
    if image.shape[-1] > input_size:
        image = photometric(resize_image(image, input_size), cfg)
    else:
        image = resize_image(photometric(image, cfg), input_size)
    return image.contiguous(), label.contiguous()


def label_targets(label: torch.Tensor, min_size: int = 2) -> dict[str, torch.Tensor]:
    """Detection targets of a label image `[H, W]`.

    Returns `boxes` `[N, 4]` cxcywh normalised to [0, 1], `boxes_xyxy` `[N, 4]` label pixels
    (x1/y1 exclusive) and `ids` `[N]`; objects narrower or shorter than `min_size` pixels
    (slivers left by cropping) are left out.
    """
    h, w = label.shape
    boxes, ids = label_boxes_xyxy(label.numpy())  # one pass (scipy find_objects)
    xyxy = torch.from_numpy(boxes).reshape(-1, 4)
    ids = torch.from_numpy(ids).long()
    keep = ((xyxy[:, 2] - xyxy[:, 0]) >= min_size) & ((xyxy[:, 3] - xyxy[:, 1]) >= min_size)
    xyxy, ids = xyxy[keep], ids[keep]
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    return {"boxes": box_xyxy_to_cxcywh(xyxy / scale), "boxes_xyxy": xyxy, "ids": ids}
