"""Box conversions and overlaps against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from cellsam.ops.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    normalized_cxcywh_to_pixel_xyxy,
    paired_box_iou,
    paired_generalized_box_iou,
    pixel_xyxy_to_normalized_cxcywh,
)


def test_cxcywh_xyxy_hand_values_and_round_trip() -> None:
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.2, 0.2]])
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    expected = torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.0, 0.8, 0.2, 1.0]])
    torch.testing.assert_close(xyxy, expected)
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)


def test_conversions_accept_leading_dims() -> None:
    boxes = torch.rand(2, 3, 5, 4)
    assert box_cxcywh_to_xyxy(boxes).shape == (2, 3, 5, 4)
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes)
    assert box_area(boxes).shape == (2, 3, 5)


def test_box_area() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.5, 2.0]])
    torch.testing.assert_close(box_area(boxes), torch.tensor([6.0, 0.5]))


def test_box_iou_overlapping_squares_is_one_seventh() -> None:
    # 2x2 squares offset by (1, 1): intersection 1, union 4 + 4 - 1 = 7.
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    iou, union = box_iou(a, b)
    assert iou.shape == (1, 3)
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 1.0, 0.0]]))
    torch.testing.assert_close(union, torch.tensor([[7.0, 4.0, 5.0]]))


def test_giou_disjoint_is_negative_exact() -> None:
    # Unit squares side by side with a gap of 1: union 2, enclosing [0, 3] x [0, 1] = 3,
    # GIoU = 0 - (3 - 2) / 3 = -1/3.
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    torch.testing.assert_close(generalized_box_iou(a, b), torch.tensor([[-1 / 3]]))


def test_giou_overlapping_and_nested() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    # IoU 1/7, enclosing 3x3 = 9, union 7: 1/7 - 2/9.
    torch.testing.assert_close(generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9]]))
    # Nested: enclosing box == outer box == union, so GIoU == IoU == 1/4.
    inner = torch.tensor([[0.5, 0.5, 1.5, 1.5]])
    torch.testing.assert_close(generalized_box_iou(a, inner), torch.tensor([[0.25]]))
    torch.testing.assert_close(generalized_box_iou(a, a), torch.tensor([[1.0]]))


def test_paired_equals_diagonal_of_pairwise() -> None:
    g = torch.Generator().manual_seed(0)
    a = box_cxcywh_to_xyxy(torch.rand(7, 4, generator=g) * 0.5 + 0.1)
    b = box_cxcywh_to_xyxy(torch.rand(7, 4, generator=g) * 0.5 + 0.1)
    iou, union = box_iou(a, b)
    p_iou, p_union = paired_box_iou(a, b)
    torch.testing.assert_close(p_iou, iou.diagonal())
    torch.testing.assert_close(p_union, union.diagonal())
    giou = generalized_box_iou(a, b)
    torch.testing.assert_close(paired_generalized_box_iou(a, b), giou.diagonal())
    assert paired_generalized_box_iou(a[:0], b[:0]).shape == (0,)


def test_giou_gradient_is_finite_for_disjoint_boxes() -> None:
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    paired_generalized_box_iou(a, b).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_pixel_normalized_conversions() -> None:
    # Image 100 high, 200 wide: cx 0.5 -> 100 px, cy 0.25 -> 25 px, w 0.5 -> 100, h 0.5 -> 50.
    norm = torch.tensor([[0.5, 0.25, 0.5, 0.5]])
    pixels = normalized_cxcywh_to_pixel_xyxy(norm, height=100, width=200)
    torch.testing.assert_close(pixels, torch.tensor([[50.0, 0.0, 150.0, 50.0]]))
    torch.testing.assert_close(pixel_xyxy_to_normalized_cxcywh(pixels, 100, 200), norm)


def test_pixel_conversion_of_integer_boxes_gives_floats() -> None:
    pixels = torch.tensor([[0, 0, 10, 20]])
    out = pixel_xyxy_to_normalized_cxcywh(pixels, height=40, width=20)
    assert out.dtype.is_floating_point
    torch.testing.assert_close(out, torch.tensor([[0.25, 0.25, 0.5, 0.5]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtype_preserved(dtype: torch.dtype) -> None:
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]], dtype=dtype)
    assert box_cxcywh_to_xyxy(boxes).dtype == dtype
    assert generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(boxes)).dtype == dtype
