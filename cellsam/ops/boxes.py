"""Box conversions and overlaps.

Convention of the project: boxes are ``cxcywh`` normalised to [0, 1] inside the detector
(predictions, matcher, losses) and ``xyxy`` in pixels at the boundaries (SAM prompts,
outputs, COCO). Every conversion between the two lives here.

All functions are pure, differentiable where that makes sense, and dtype/device agnostic.
Conversions accept any leading shape ``[..., 4]``; overlap functions are pairwise
``[N, 4] x [M, 4] -> [N, M]`` unless their name says ``paired`` (``[N, 4] x [N, 4] -> [N]``).
Overlap functions expect boxes with positive area (``x1 > x0``, ``y1 > y0``); degenerate
pairs give NaN (0 / 0) rather than a silently wrong number.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "generalized_box_iou",
    "normalized_cxcywh_to_pixel_xyxy",
    "paired_box_iou",
    "paired_generalized_box_iou",
    "pixel_xyxy_to_normalized_cxcywh",
]


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (cx, cy, w, h) -> ``[..., 4]`` (x0, y0, x1, y1), same units."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (x0, y0, x1, y1) -> ``[..., 4]`` (cx, cy, w, h), same units."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack((0.5 * (x0 + x1), 0.5 * (y0 + y1), x1 - x0, y1 - y0), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """``[..., 4]`` xyxy -> ``[...]`` area (negative for inverted boxes; not clamped)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _overlaps(boxes1: Tensor, boxes2: Tensor, pairwise: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Intersection, union and enclosing-box area of xyxy boxes.

    Works on coordinate planes broadcast against each other (``[N, 1]`` with ``[1, M]`` when
    ``pairwise``, else ``[N]`` with ``[N]``) rather than on ``[N, M, 2]`` corner tensors:
    every operation then runs on contiguous memory, about twice as fast for a
    3500 x 1000 matcher cost matrix.
    """
    a = boxes1.unbind(-1)
    b = boxes2.unbind(-1)
    if pairwise:
        a = tuple(c[:, None] for c in a)
        b = tuple(c[None, :] for c in b)
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    inter_w = (torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp(min=0)
    inter_h = (torch.minimum(ay1, by1) - torch.maximum(ay0, by0)).clamp(min=0)
    inter = inter_w * inter_h
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    enclosing = (torch.maximum(ax1, bx1) - torch.minimum(ax0, bx0)) * (
        torch.maximum(ay1, by1) - torch.minimum(ay0, by0)
    )
    return inter, union, enclosing


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of xyxy boxes.

    Args:
        boxes1: ``[N, 4]`` xyxy.
        boxes2: ``[M, 4]`` xyxy.

    Returns:
        ``(iou [N, M], union [N, M])``; the union is returned because GIoU needs it.
    """
    inter, union, _ = _overlaps(boxes1, boxes2, pairwise=True)
    return inter / union, union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalised IoU (Rezatofighi et al. 2019) of xyxy boxes.

    ``GIoU = IoU - (|C| - |union|) / |C|`` with ``C`` the smallest enclosing box; it lies in
    ``(-1, 1]`` and is negative for disjoint boxes.

    Args:
        boxes1: ``[N, 4]`` xyxy.
        boxes2: ``[M, 4]`` xyxy.

    Returns:
        ``[N, M]`` GIoU.
    """
    inter, union, enclosing = _overlaps(boxes1, boxes2, pairwise=True)
    return inter / union - (enclosing - union) / enclosing


def paired_box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """IoU of matched pairs, ``boxes1[i]`` with ``boxes2[i]``.

    The losses only need the diagonal of the pairwise matrix; computing it directly costs
    ``O(N)`` instead of ``O(N^2)`` (4000 matched cells per batch would mean 16M entries).

    Args:
        boxes1: ``[N, 4]`` xyxy.
        boxes2: ``[N, 4]`` xyxy.

    Returns:
        ``(iou [N], union [N])``.
    """
    inter, union, _ = _overlaps(boxes1, boxes2, pairwise=False)
    return inter / union, union


def paired_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of matched pairs: ``[N, 4] x [N, 4] -> [N]`` (xyxy); see ``generalized_box_iou``."""
    inter, union, enclosing = _overlaps(boxes1, boxes2, pairwise=False)
    return inter / union - (enclosing - union) / enclosing


def normalized_cxcywh_to_pixel_xyxy(boxes: Tensor, height: float, width: float) -> Tensor:
    """Detector boxes to pixel boxes.

    Args:
        boxes: ``[..., 4]`` cxcywh normalised by the image size (x by width, y by height).
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        ``[..., 4]`` xyxy in pixels (not clipped to the image).
    """
    scale = boxes.new_tensor([width, height, width, height])
    return box_cxcywh_to_xyxy(boxes) * scale


def pixel_xyxy_to_normalized_cxcywh(boxes: Tensor, height: float, width: float) -> Tensor:
    """Pixel boxes to detector targets; inverse of ``normalized_cxcywh_to_pixel_xyxy``.

    Args:
        boxes: ``[..., 4]`` xyxy in pixels.
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        ``[..., 4]`` cxcywh normalised to [0, 1] for boxes inside the image.
    """
    scale = boxes.new_tensor([width, height, width, height])
    return box_xyxy_to_cxcywh(boxes / scale)
