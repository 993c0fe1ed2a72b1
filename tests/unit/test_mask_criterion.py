"""Stage-2 mask losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from cellsam.models.losses import dice_loss, sigmoid_focal_loss
from cellsam.models.mask_criterion import MaskCriterion, mask_iou

WEIGHTS = {"mask_focal": 20.0, "mask_dice": 1.0, "iou_mse": 1.0}


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_one_pixel_terms_by_hand():
    # Two 1x2 masks. Mask 0: logits (2, -1), target (1, 0). Mask 1: logits (0, 0), target (1, 1).
    logits = torch.tensor([[[2.0, -1.0]], [[0.0, 0.0]]])
    targets = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])
    iou_pred = torch.tensor([0.5, 0.25])
    crit = MaskCriterion(WEIGHTS, focal_alpha=0.25, focal_gamma=2.0)
    out = crit(logits, iou_pred, targets, num_masks=2.0)

    def focal(x, t):
        p = _sig(x)
        p_t = p if t else 1 - p
        a_t = 0.25 if t else 0.75
        return -a_t * (1 - p_t) ** 2 * math.log(p_t)

    f0 = (focal(2.0, 1) + focal(-1.0, 0)) / 2
    f1 = (focal(0.0, 1) + focal(0.0, 1)) / 2
    assert float(out["mask_focal"]) == pytest.approx((f0 + f1) / 2, rel=1e-6)

    d0 = 1 - (2 * _sig(2.0) + 1) / (_sig(2.0) + _sig(-1.0) + 1 + 1)
    d1 = 1 - (2 * 1.0 + 1) / (1.0 + 2 + 1)
    assert float(out["mask_dice"]) == pytest.approx((d0 + d1) / 2, rel=1e-6)

    # thresholded predictions: mask 0 -> (1, 0), IoU 1; mask 1 -> (0, 0), IoU 0
    assert float(out["iou_mse"]) == pytest.approx(((0.5 - 1) ** 2 + 0.25**2) / 2, rel=1e-6)
    total = crit.weighted_total(out)
    expected = 20 * (f0 + f1) / 2 + (d0 + d1) / 2 + ((0.5 - 1) ** 2 + 0.25**2) / 2
    assert float(total) == pytest.approx(expected, rel=1e-6)


def test_focal_matches_torchvision_and_is_shared_with_stage_1():
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 8, 8), (torch.rand(3, 8, 8) > 0.5).float()
    ref = torchvision.ops.sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, 0.25, 2.0), ref)
    crit = MaskCriterion(WEIGHTS, 0.25, 2.0)
    torch.testing.assert_close(crit.loss_focal(logits, targets), ref.flatten(1).mean(1))
    from cellsam.models.finder import criterion

    assert criterion.sigmoid_focal_loss is sigmoid_focal_loss


def test_zero_focal_weight_skips_the_term_and_unknown_names_are_refused():
    logits, targets = torch.randn(2, 4, 4), torch.ones(2, 4, 4)
    crit = MaskCriterion({"mask_focal": 0.0, "mask_dice": 1.0, "iou_mse": 1.0}, 0.25, 2.0)
    out = crit(logits, torch.zeros(2), targets, 1.0)
    assert float(out["mask_focal"]) == 0.0
    assert float(crit.weighted_total(out)) == pytest.approx(
        float(out["mask_dice"] + out["iou_mse"]))
    torch.testing.assert_close(out["mask_dice"], dice_loss(logits, targets).sum())
    with pytest.raises(ValueError, match="mask_bce"):
        MaskCriterion({"mask_bce": 1.0}, 0.25, 2.0)


def test_mask_iou_by_hand():
    pred = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]], [[1, 0, 0, 0]]], dtype=torch.bool)
    true = torch.tensor([[[0, 1, 1, 0]], [[0, 0, 0, 0]], [[0, 0, 0, 1]]], dtype=torch.bool)
    assert mask_iou(pred, true).tolist() == pytest.approx([1 / 3, 1.0, 0.0])
