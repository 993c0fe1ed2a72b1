"""SetCriterion: each loss term on hand-made cases with values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from conf_values import make_criterion

from cellsam.models.losses import sigmoid_focal_loss

WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def _criterion(weights: dict, **settings):
    """The criterion at the focal settings the hand computations below use (alpha 0.25,
    gamma 2), whatever finder.yaml says."""
    return make_criterion(weights, focal_alpha=0.25, focal_gamma=2.0, **settings)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _focal_pos(logit: float) -> float:
    p = _sigmoid(logit)
    return 0.25 * (1 - p) ** 2 * -math.log(p)


def _focal_neg(logit: float) -> float:
    p = _sigmoid(logit)
    return 0.75 * p**2 * -math.log(1 - p)


def _two_query_case(requires_grad: bool = False) -> tuple[dict, list[dict]]:
    # Query 0 sits near the target and is confident; query 1 is far away.
    logits = torch.tensor([[[2.0], [-1.0]]], requires_grad=requires_grad)
    boxes = torch.tensor(
        [[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]], requires_grad=requires_grad
    )
    targets = [{"boxes": torch.tensor([[0.55, 0.5, 0.2, 0.2]])}]
    return {"pred_logits": logits, "pred_boxes": boxes, "aux_outputs": []}, targets


def test_losses_two_queries_one_target_by_hand() -> None:
    outputs, targets = _two_query_case()
    losses = _criterion(WEIGHTS)(outputs, targets, num_boxes=1.0)
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou"}
    # Query 0 is matched (positive), query 1 is background.
    assert losses["loss_ce"].item() == pytest.approx(_focal_pos(2.0) + _focal_neg(-1.0), rel=1e-5)
    # |0.5 - 0.55| on cx only.
    assert losses["loss_bbox"].item() == pytest.approx(0.05, abs=1e-6)
    # xyxy [0.4,0.4,0.6,0.6] vs [0.45,0.4,0.65,0.6]: IoU 0.03/0.05 = 0.6, enclosing = union.
    assert losses["loss_giou"].item() == pytest.approx(0.4, abs=1e-6)


def test_losses_are_divided_by_num_boxes() -> None:
    outputs, targets = _two_query_case()
    criterion = _criterion(WEIGHTS)
    one = criterion(outputs, targets, num_boxes=1.0)
    four = criterion(outputs, targets, num_boxes=torch.tensor(4.0))
    for name in one:
        assert four[name].item() == pytest.approx(one[name].item() / 4, rel=1e-6)


def test_aux_terms_and_weighted_total() -> None:
    outputs, targets = _two_query_case()
    # An aux layer whose best query is the other one: matched by its own matching.
    aux = {key: outputs[key].flip(1) for key in ("pred_logits", "pred_boxes")}
    outputs["aux_outputs"] = [aux, aux]
    criterion = _criterion(WEIGHTS)
    losses = criterion(outputs, targets, num_boxes=1.0)
    assert set(losses) == {f"{n}{s}" for n in WEIGHTS for s in ("", "_0", "_1")}
    for name in WEIGHTS:
        assert losses[f"{name}_0"].item() == pytest.approx(losses[name].item(), rel=1e-6)
    expected = sum(WEIGHTS[n] * losses[f"{n}{s}"].item() for n in WEIGHTS for s in ("", "_0", "_1"))
    assert criterion.weighted_total(losses).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_total_skips_terms_without_weight() -> None:
    outputs, targets = _two_query_case()
    criterion = _criterion({"loss_ce": 2.0})
    losses = criterion(outputs, targets, num_boxes=1.0)
    assert criterion.weighted_total(losses).item() == pytest.approx(2 * losses["loss_ce"].item())


def test_unknown_weight_name_raises() -> None:
    with pytest.raises(ValueError, match="loss_dice"):
        _criterion({"loss_dice": 1.0})


def test_no_targets_pushes_everything_to_background() -> None:
    outputs, _ = _two_query_case(requires_grad=True)
    empty = [{"boxes": torch.zeros(0, 4)}]
    criterion = _criterion(WEIGHTS)
    losses = criterion(outputs, empty, num_boxes=1.0)
    assert losses["loss_ce"].item() == pytest.approx(_focal_neg(2.0) + _focal_neg(-1.0), rel=1e-5)
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    assert losses["loss_bbox"].requires_grad and losses["loss_giou"].requires_grad
    criterion.weighted_total(losses).backward()
    logits_grad = outputs["pred_logits"].grad
    assert (logits_grad > 0).all()  # gradient descent lowers every score
    assert torch.equal(outputs["pred_boxes"].grad, torch.zeros_like(outputs["pred_boxes"]))


def test_batch_mixing_empty_and_non_empty_images() -> None:
    outputs, targets = _two_query_case()
    batch = {
        "pred_logits": outputs["pred_logits"].repeat(2, 1, 1),
        "pred_boxes": outputs["pred_boxes"].repeat(2, 1, 1),
    }
    losses = _criterion(WEIGHTS)(
        batch, [targets[0], {"boxes": torch.zeros(0, 4)}], num_boxes=1.0
    )
    expected_ce = _focal_pos(2.0) + _focal_neg(-1.0) + _focal_neg(2.0) + _focal_neg(-1.0)
    assert losses["loss_ce"].item() == pytest.approx(expected_ce, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(0.05, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.4, abs=1e-6)


def test_sigmoid_focal_loss_matches_torchvision() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, 1, generator=g) * 3
    labels = (torch.rand(3, 50, 1, generator=g) > 0.8).float()
    ours = sigmoid_focal_loss(logits, labels, alpha=0.25, gamma=2.0)
    ref = torchvision.ops.sigmoid_focal_loss(logits, labels, alpha=0.25, gamma=2.0)
    torch.testing.assert_close(ours, ref)


def test_bf16_inputs_give_float32_losses() -> None:
    outputs, targets = _two_query_case()
    outputs = {
        "pred_logits": outputs["pred_logits"].bfloat16(),
        "pred_boxes": outputs["pred_boxes"].bfloat16(),
    }
    losses = _criterion(WEIGHTS)(outputs, targets, num_boxes=1.0)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 1, generator=g, dtype=torch.float64, requires_grad=True)
    boxes = (torch.rand(1, 4, 4, generator=g, dtype=torch.float64) * 0.3 + 0.2).requires_grad_()
    targets = [{"boxes": torch.rand(2, 4, generator=g, dtype=torch.float64) * 0.3 + 0.2}]
    criterion = _criterion(WEIGHTS)

    def total(lg: torch.Tensor, bx: torch.Tensor) -> torch.Tensor:
        losses = criterion({"pred_logits": lg, "pred_boxes": bx}, targets, num_boxes=2.0)
        assert all(v.dtype == torch.float64 for v in losses.values())
        return criterion.weighted_total(losses)

    assert torch.autograd.gradcheck(total, (logits, boxes))


def _random_case(dtype: torch.dtype) -> tuple[dict, list[dict]]:
    """3 decoder layers x 3 images x 40 queries; 6, 0 and 11 cells."""
    g = torch.Generator().manual_seed(7)
    layers = [{"pred_logits": (torch.randn(3, 40, 1, generator=g) * 2).to(dtype),
               "pred_boxes": (torch.rand(3, 40, 4, generator=g) * 0.6 + 0.2).to(dtype)}
              for _ in range(3)]
    targets = []
    for n in (6, 0, 11):
        centres = torch.rand(n, 2, generator=g) * 0.8 + 0.1
        sides = torch.rand(n, 2, generator=g) * 0.1 + 0.02
        targets.append({"boxes": torch.cat((centres, sides), 1).to(dtype)})
    return {**layers[-1], "aux_outputs": layers[:-1]}, targets


# Weighted totals of `_random_case` computed by the criterion as it was before the training
# aids moved to training_aids.py (commit 4908886^, its `aux_one_to_many` argument), keyed by
# (dtype, iou_aware_class, aux_layer_matches_per_cell). The refactored criterion gave the
# same bits for terms, totals and gradients on CPU; the tolerances only allow for another
# CPU's summation order.
_PRE_SPLIT_TOTALS = {
    (torch.float32, False, 1): 95.1438980102539,
    (torch.float32, True, 1): 140.8680877685547,
    (torch.float32, False, 3): 79.63483428955078,
    (torch.float32, True, 3): 108.26160430908203,
    (torch.float64, False, 1): 95.143905250883,
    (torch.float64, False, 3): 79.63482236346712,
}
_PRE_SPLIT_TERMS_BOTH_AIDS = {  # float32, iou_aware_class, 3 matches per cell on aux layers
    "loss_ce": 13.48358154296875, "loss_bbox": 2.8368330001831055,
    "loss_giou": 3.1167829036712646, "loss_ce_0": 3.999007225036621,
    "loss_bbox_0": 2.916273832321167, "loss_giou_0": 3.006316661834717,
    "loss_ce_1": 4.9245219230651855, "loss_bbox_1": 3.2542612552642822,
    "loss_giou_1": 3.082166910171509,
}


@pytest.mark.parametrize("key", list(_PRE_SPLIT_TOTALS), ids=str)
def test_equals_the_pre_split_criterion(key: tuple) -> None:
    dtype, iou_aware, k = key
    outputs, targets = _random_case(dtype)
    criterion = _criterion(WEIGHTS, iou_aware_class=iou_aware,
                                aux_layer_matches_per_cell=k)
    losses = criterion(outputs, targets, torch.tensor(17.0 / 3))
    rel = 1e-6 if dtype == torch.float32 else 1e-12
    assert criterion.weighted_total(losses).item() == pytest.approx(_PRE_SPLIT_TOTALS[key],
                                                                    rel=rel)
    if key == (torch.float32, True, 3):
        assert list(losses) == list(_PRE_SPLIT_TERMS_BOTH_AIDS)
        for name, value in _PRE_SPLIT_TERMS_BOTH_AIDS.items():
            assert losses[name].item() == pytest.approx(value, rel=1e-6), name
