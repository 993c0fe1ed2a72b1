"""Auto-prompt generators of Segment Any Cell (SAC, Na et al. 2024): networks that predict,
per pixel, a nucleus foreground map and a nucleus-centre map, from which
`cellsam.inference.point_prompts.discriminate` makes point prompts.

- `UNetPrompter`: a small U-Net on the image (SAC's separate network);
- `FeatureHeadPrompter`: a light convolutional head on the image encoder's features (the
  config alternative: no second backbone).

Both return logits `{"foreground": [B, 1, S, S], "centre": [B, 1, S, S]}`. The centre map
separates touching nuclei that the foreground map merges into one component.

`prompter_targets` builds the targets from instance labels and `PrompterCriterion` the
losses (BCE + soft Dice on the foreground, BCE on the centre map). Pure torch (the targets
use scipy's distance transform); no Lightning, no Hydra.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from cellsam.models.losses import loss_dtype

__all__ = [
    "PROMPTER_LOSS_NAMES",
    "FeatureHeadPrompter",
    "PrompterCriterion",
    "UNetPrompter",
    "centre_map",
    "prompter_targets",
]

PROMPTER_LOSS_NAMES = ("fg_bce", "fg_dice", "centre")
_MAX_GROUPS = 8


def _norm(channels: int) -> nn.GroupNorm:
    # Group norm: independent of the batch size (batches of one image, DDP without sync).
    return nn.GroupNorm(math.gcd(_MAX_GROUPS, channels), channels)


class ConvBlock(nn.Sequential):
    """Two `3x3 conv -> group norm -> ReLU` layers: `[B, c_in, h, w] -> [B, c_out, h, w]`."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), _norm(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), _norm(c_out), nn.ReLU(inplace=True),
        )


def _split_heads(logits: Tensor) -> dict[str, Tensor]:
    """`[B, 2, S, S]` -> `{"foreground": [B, 1, S, S], "centre": [B, 1, S, S]}`."""
    return {"foreground": logits[:, 0:1], "centre": logits[:, 1:2]}


class UNetPrompter(nn.Module):
    """A small U-Net predicting foreground and centre logits at the input resolution.

    `depth` resolution levels with `base_channels * 2**i` channels at level `i`
    (max-pooling down, bilinear up-sampling to the skip's exact size, so any image size
    works; sizes divisible by `2**(depth - 1)` lose no border pixels to pooling).
    """

    def __init__(self, in_channels: int, base_channels: int, depth: int) -> None:
        super().__init__()
        if in_channels < 1 or base_channels < 1:
            raise ValueError(f"UNetPrompter: in_channels ({in_channels}) and base_channels "
                             f"({base_channels}) must be >= 1")
        if depth < 1:
            raise ValueError(f"UNetPrompter: depth must be >= 1, got {depth}")
        self.in_channels = in_channels
        widths = [base_channels * 2**i for i in range(depth)]
        self.down = nn.ModuleList(
            ConvBlock(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths)
        )
        # Decoder level i takes the up-sampled level i+1 concatenated with skip i.
        self.up = nn.ModuleList(
            ConvBlock(widths[i + 1] + widths[i], widths[i]) for i in range(depth - 1)
        )
        self.head = nn.Conv2d(widths[0], 2, 1)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """
        Args:
            images: `[B, C, S, S]` in [0, 1] (any `H x W` works).

        Returns:
            `{"foreground": [B, 1, H, W], "centre": [B, 1, H, W]}` logits.
        """
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"UNetPrompter: images must be [B, {self.in_channels}, H, W], "
                             f"got {tuple(images.shape)}")
        x = images * 2 - 1  # zero-centred input
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for i in range(len(self.up) - 1, -1, -1):
            skip = skips[i]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([x, skip], dim=1))
        return _split_heads(self.head(x))


class FeatureHeadPrompter(nn.Module):
    """A light head on image-encoder features: `3x3 conv` to `hidden`, two bilinear
    `x2` up-samplings each followed by a `3x3 conv` (`hidden // 2` channels), a `1x1` conv
    to the two maps, then bilinear resizing of the logits to `out_size`."""

    def __init__(self, in_channels: int, hidden: int, out_size: int) -> None:
        super().__init__()
        if in_channels < 1 or hidden < 2 or out_size < 1:
            raise ValueError(f"FeatureHeadPrompter: need in_channels >= 1, hidden >= 2, "
                             f"out_size >= 1; got {in_channels}, {hidden}, {out_size}")
        self.in_channels = in_channels
        self.out_size = out_size
        half = hidden // 2

        def conv(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                                 _norm(c_out), nn.GELU())

        self.stem = conv(in_channels, hidden)
        self.up1 = conv(hidden, half)
        self.up2 = conv(half, half)
        self.head = nn.Conv2d(half, 2, 1)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """
        Args:
            features: `[B, C, h, w]` image-encoder features.

        Returns:
            `{"foreground": [B, 1, out_size, out_size], "centre": [B, 1, out_size,
            out_size]}` logits.
        """
        if features.ndim != 4 or features.shape[1] != self.in_channels:
            raise ValueError(f"FeatureHeadPrompter: features must be [B, {self.in_channels}, "
                             f"h, w], got {tuple(features.shape)}")
        x = self.stem(features)
        x = self.up1(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = self.up2(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = self.head(x)
        if x.shape[-2:] != (self.out_size, self.out_size):
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear",
                              align_corners=False)
        return _split_heads(x)


def centre_map(labels: np.ndarray) -> np.ndarray:
    """Each cell's Euclidean distance transform divided by its maximum: `[H, W]` int ->
    `[H, W]` float32 in [0, 1], 0 on background.

    A pixel's distance is to the nearest pixel outside its own cell (other cells count as
    outside, the image border does not), so touching cells get separate peaks of 1 at
    their innermost pixels and value `1 / max` on their rims.
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.float32)
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        cell = labels[sl] == index
        # A one-pixel background rim on the cut edges only: the image border is not a
        # cell boundary (a cell cut by the border keeps its inner distances).
        pads = [(int(s.start > 0), int(s.stop < n)) for s, n in zip(sl, labels.shape)]
        padded = np.pad(cell, pads)
        if padded.all():  # a cell filling its whole image has no boundary
            dist = np.ones(cell.shape)
        else:
            dist = ndimage.distance_transform_edt(padded)
            dist = dist[pads[0][0]:dist.shape[0] - pads[0][1],
                        pads[1][0]:dist.shape[1] - pads[1][1]]
        out[sl][cell] = (dist[cell] / dist[cell].max()).astype(np.float32)
    return out


def prompter_targets(labels: Tensor) -> dict[str, Tensor]:
    """Targets of the prompter's two maps.

    Args:
        labels: `[B, H, W]` int instance labels (0 background).

    Returns:
        `"foreground"`: `[B, 1, H, W]` float {0, 1}; `"centre"`: `[B, 1, H, W]` float in
        [0, 1] (`centre_map` of each image: per-cell distance transform, 1 at the cell's
        innermost pixels), on the device of `labels`.
    """
    if labels.ndim != 3 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"prompter_targets: labels must be an int tensor [B, H, W], got "
                         f"{labels.dtype} {tuple(labels.shape)}")
    foreground = (labels > 0).float().unsqueeze(1)
    host = labels.detach().cpu().numpy()
    centre = np.stack([centre_map(lab) for lab in host]) if len(host) else \
        np.zeros(host.shape, np.float32)
    return {"foreground": foreground,
            "centre": torch.from_numpy(centre).unsqueeze(1).to(labels.device)}


class PrompterCriterion(nn.Module):
    """The prompter's losses, one method per term, each a mean over the batch:

    - `fg_bce`: binary cross-entropy of the foreground logits, mean over pixels;
    - `fg_dice`: per-image soft Dice `1 - (2 |p t| + 1) / (|p| + |t| + 1)` of the
      foreground (0 for an empty image predicted empty), mean over images;
    - `centre`: binary cross-entropy of the centre logits against the soft centre target,
      mean over pixels.

    Returns each term multiplied by its weight and `"loss"`, their sum; all finite and
    differentiable for a batch without cells.
    """

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        names = set(weights)
        if names != set(PROMPTER_LOSS_NAMES):
            raise ValueError(f"PrompterCriterion: weights must name exactly "
                             f"{PROMPTER_LOSS_NAMES}; got {sorted(names)}")
        self.weights = {name: float(weights[name]) for name in PROMPTER_LOSS_NAMES}

    @staticmethod
    def loss_fg_bce(logits: Tensor, target: Tensor) -> Tensor:
        """Mean BCE over `[B, 1, H, W]` -> scalar."""
        logits = logits.to(loss_dtype(logits.dtype))
        return F.binary_cross_entropy_with_logits(logits, target.to(logits))

    @staticmethod
    def loss_fg_dice(logits: Tensor, target: Tensor) -> Tensor:
        """Mean over images of the per-image soft Dice loss: `[B, 1, H, W]` -> scalar."""
        p = logits.to(loss_dtype(logits.dtype)).sigmoid().flatten(1)
        t = target.to(p).flatten(1)
        dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
        return dice.mean()

    @staticmethod
    def loss_centre(logits: Tensor, target: Tensor) -> Tensor:
        """Mean soft-target BCE of the centre map over `[B, 1, H, W]` -> scalar."""
        logits = logits.to(loss_dtype(logits.dtype))
        return F.binary_cross_entropy_with_logits(logits, target.to(logits))

    def forward(self, outputs: Mapping[str, Tensor],
                targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """
        Args:
            outputs: the prompter's `{"foreground", "centre"}` logits `[B, 1, H, W]`.
            targets: `prompter_targets(labels)` at the same `H x W`.

        Returns:
            `{"fg_bce", "fg_dice", "centre"}` weighted scalar terms and `"loss"`, their sum.
        """
        for key in ("foreground", "centre"):
            if outputs[key].shape != targets[key].shape:
                raise ValueError(f"PrompterCriterion: outputs[{key!r}] {tuple(outputs[key].shape)}"
                                 f" and targets[{key!r}] {tuple(targets[key].shape)} differ")
        if outputs["foreground"].shape[0] == 0:
            raise ValueError("PrompterCriterion: empty batch (B = 0)")
        terms = {
            "fg_bce": self.loss_fg_bce(outputs["foreground"], targets["foreground"]),
            "fg_dice": self.loss_fg_dice(outputs["foreground"], targets["foreground"]),
            "centre": self.loss_centre(outputs["centre"], targets["centre"]),
        }
        weighted = {name: self.weights[name] * value for name, value in terms.items()}
        weighted["loss"] = sum(weighted.values())
        return weighted
