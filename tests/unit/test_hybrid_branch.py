"""H-DETR hybrid branch: extra training-only queries with one-to-many matching."""

from __future__ import annotations

import pytest
import torch

from cellsam.models.finder.criterion import SetCriterion
from cellsam.models.finder.matcher import HungarianMatcher

WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def test_branch_is_training_only_and_leaves_the_main_queries_unchanged(small_finder) -> None:
    plain, hybrid = small_finder(), small_finder(num_queries_one_to_many=24)
    extra = set(hybrid.state_dict()) - set(plain.state_dict())
    assert extra == {"transformer.position_one_to_many.weight"}
    hybrid.load_state_dict(plain.state_dict(), strict=False)  # same shared weights
    x = torch.randn(2, 16, 6, 5)
    out = hybrid.train()(x)
    branch = out["one_to_many"]
    assert branch["pred_logits"].shape == (2, 24, 1) and branch["pred_boxes"].shape == (2, 24, 4)
    assert len(branch["aux_outputs"]) == 2
    # The groups never attend to each other: main outputs equal the plain model's, in
    # training and in eval, and moving the branch's anchors does not change them.
    reference = plain.train()(x)
    assert torch.equal(out["pred_boxes"], reference["pred_boxes"])
    first_aux = reference["aux_outputs"][0]["pred_logits"]
    assert torch.equal(out["aux_outputs"][0]["pred_logits"], first_aux)
    with torch.no_grad():
        hybrid.transformer.position_one_to_many.weight.uniform_(0, 1)
    moved = hybrid(x)
    assert torch.equal(moved["pred_logits"], out["pred_logits"])
    assert not torch.equal(moved["one_to_many"]["pred_boxes"], branch["pred_boxes"])
    evaluated = hybrid.eval()(x)
    assert "one_to_many" not in evaluated
    assert torch.equal(evaluated["pred_boxes"], out["pred_boxes"])


def test_branch_gets_gradients_and_shares_the_heads(small_finder) -> None:
    hybrid = small_finder(num_queries_one_to_many=24).train()
    out = hybrid(torch.randn(2, 16, 6, 5))
    out["one_to_many"]["pred_boxes"].sum().backward()
    assert hybrid.transformer.position_one_to_many.weight.grad.abs().sum() > 0
    assert hybrid.bbox_embed.layers[-1].weight.grad.abs().sum() > 0  # shared box head
    assert hybrid.transformer.position.weight.grad is None  # main anchors untouched


def test_branch_with_patterns_pairs_every_anchor_with_every_pattern(small_finder) -> None:
    hybrid = small_finder(num_queries_one_to_many=8, num_patterns=2).train()
    out = hybrid(torch.randn(1, 16, 6, 5))
    assert out["pred_boxes"].shape == (1, 32, 4)
    assert out["one_to_many"]["pred_boxes"].shape == (1, 16, 4)


def _layer(boxes: torch.Tensor) -> dict:
    return {"pred_logits": torch.zeros(1, boxes.shape[0], 1), "pred_boxes": boxes[None]}


def test_branch_losses_match_k_copies_and_divide_by_k_num_boxes() -> None:
    targets = [{"boxes": torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.2, 0.1]])}]
    # Branch: 3 exact copies of each cell shifted by d in x, plus 4 far queries.
    d = 0.01
    copies = targets[0]["boxes"].repeat(3, 1) + torch.tensor([d, 0.0, 0.0, 0.0])
    far = torch.tensor([[0.95, 0.05, 0.02, 0.02]]).repeat(4, 1)
    branch = _layer(torch.cat((copies, far)))
    branch["aux_outputs"] = [_layer(torch.cat((copies, far)))]
    main = _layer(targets[0]["boxes"].clone())
    main["aux_outputs"] = [_layer(targets[0]["boxes"].clone())]
    crit = SetCriterion(HungarianMatcher(), WEIGHTS, one_to_many_k=3, one_to_many_weight=0.5)
    losses = crit({**main, "one_to_many": branch}, targets, 2.0)
    assert {n for n in losses if "one_to_many" in n} == {
        f"{base}_one_to_many{s}" for base in WEIGHTS for s in ("", "_0")
    }
    # 6 matches (3 per cell), each off by d in x: L1 = 6 d / (num_boxes 2 x k 3) = d.
    assert losses["loss_bbox_one_to_many"].item() == pytest.approx(d, rel=1e-4)
    assert losses["loss_bbox_one_to_many_0"].item() == pytest.approx(d, rel=1e-4)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-7)
    without = crit(main, targets, 2.0)
    branch_terms = sum(
        WEIGHTS[name.split("_one")[0]] * v for name, v in losses.items() if "one_to_many" in name
    )
    total = crit.weighted_total(losses)
    assert total.item() == pytest.approx(
        crit.weighted_total(without).item() + 0.5 * branch_terms.item(), rel=1e-6
    )


def test_branch_k_is_capped_by_its_queries_and_validated(small_finder) -> None:
    targets = [{"boxes": torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.2, 0.1]])}]
    crit = SetCriterion(HungarianMatcher(), WEIGHTS, one_to_many_k=6)
    five = _layer(torch.rand(5, 4) * 0.5 + 0.25)
    assert crit._aux_repeats(five, targets, crit.one_to_many_k) == 2  # 2 cells x 2 <= 5
    losses = crit({**_layer(torch.rand(3, 4) * 0.5 + 0.25), "one_to_many": five}, targets, 2.0)
    assert torch.isfinite(losses["loss_giou_one_to_many"])
    with pytest.raises(ValueError, match="one_to_many_k"):
        SetCriterion(HungarianMatcher(), WEIGHTS, one_to_many_k=0)
    with pytest.raises(ValueError, match="num_queries_one_to_many"):
        small_finder(num_queries_one_to_many=-1)
