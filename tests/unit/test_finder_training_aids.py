"""Optional CellFinder training aids: spatial prior, grid anchors, IoU-aware class loss,
more matches per cell on the auxiliary layers, enlarged synthetic cells."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conf_values import make_criterion, make_matcher

from cellsam.data.synthetic import generate_sample, render_scaled
from cellsam.models.finder import CellFinder
from cellsam.models.finder.anchor_detr import init_anchor_points
from cellsam.models.finder.rcda import MultiheadRCDA
from cellsam.models.finder.spatial_prior import AnchorSpatialPrior
from cellsam.models.finder.training_aids import aux_layer_repeats
from cellsam.models.losses import quality_focal_loss

WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def test_spatial_prior_values_by_hand() -> None:
    prior = AnchorSpatialPrior(num_heads=2, sigma_min=0.1, sigma_max=0.2)
    assert torch.exp(prior.log_sigma).tolist() == pytest.approx([0.1, 0.2])
    anchors = torch.tensor([[0.5, 0.25]])
    pos = torch.tensor([0.25, 0.5, 0.75])
    row, col = prior(anchors, pos, pos)
    assert row.shape == (2, 1, 3) and col.shape == (2, 1, 3)
    # -(dx)^2 / (2 sigma^2): dx = 0.25 -> -3.125 (sigma 0.1), -0.78125 (sigma 0.2)
    assert row[0, 0].tolist() == pytest.approx([-3.125, 0.0, -3.125])
    assert row[1, 0].tolist() == pytest.approx([-0.78125, 0.0, -0.78125])
    assert col[0, 0].tolist() == pytest.approx([0.0, -3.125, -12.5])


def test_rcda_prior_focuses_attention_on_one_cell() -> None:
    torch.manual_seed(0)
    attn = MultiheadRCDA(embed_dim=8, num_heads=2)
    b, h, w, c = 1, 3, 4, 8
    value = torch.randn(b, h, w, c)
    q = torch.randn(b, 1, c)
    key_row, key_col = torch.randn(b, w, c), torch.randn(b, h, c)
    # A prior that is -1e4 everywhere but at (y=2, x=1) makes every head read that cell.
    prior_row = torch.full((2, 1, w), -1e4)
    prior_row[..., 1] = 0
    prior_col = torch.full((2, 1, h), -1e4)
    prior_col[..., 2] = 0
    out = attn(q, q, key_row, key_col, value, (prior_row, prior_col))
    v = attn._project(value[:, 2, 1], 4)  # the value at that cell, projected
    expected = attn.out_proj(v)
    assert torch.allclose(out[:, 0], expected, atol=1e-5)


def test_grid_anchor_points() -> None:
    points = torch.empty(4, 2)
    init_anchor_points(points, "grid")
    assert points.tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    with pytest.raises(ValueError, match="square number"):
        init_anchor_points(torch.empty(5, 2), "grid")
    with pytest.raises(ValueError, match="anchor_init"):
        init_anchor_points(torch.empty(4, 2), "hexagonal")


def test_finder_with_aids_has_same_outputs_and_extra_parameters() -> None:
    plain = CellFinder(in_channels=16, hidden_dim=32, ffn_dim=64, num_heads=4,
                       num_encoder_layers=1, num_decoder_layers=2, num_queries=16)
    aided = CellFinder(in_channels=16, hidden_dim=32, ffn_dim=64, num_heads=4,
                       num_encoder_layers=1, num_decoder_layers=2, num_queries=16,
                       spatial_prior=True, anchor_init="grid")
    extra = set(aided.state_dict()) - set(plain.state_dict())
    assert extra == {f"transformer.decoder_layers.{i}.spatial_prior.log_sigma" for i in range(2)}
    out = aided(torch.randn(2, 16, 6, 5))
    assert out["pred_logits"].shape == (2, 16, 1) and out["pred_boxes"].shape == (2, 16, 4)
    out["pred_logits"].sum().backward()
    assert aided.transformer.decoder_layers[1].spatial_prior.log_sigma.grad is not None


def test_quality_focal_loss_by_hand() -> None:
    logits = torch.tensor([0.0, 0.0, 0.0, 2.0])
    quality = torch.tensor([1.0, 0.5, 0.0, 0.0])
    loss = quality_focal_loss(logits, quality, gamma=2.0)
    p = 1 / (1 + math.exp(-2.0))
    expected = [math.log(2) * 0.25, 0.0, math.log(2) * 0.25, -math.log(1 - p) * p**2]
    assert loss.tolist() == pytest.approx(expected, rel=1e-5)


def test_iou_aware_class_target_is_the_box_iou() -> None:
    # One query predicts exactly the target's box, shifted by half its width (IoU 1/3).
    logits = torch.tensor([[[0.0], [-5.0]]])
    boxes = torch.tensor([[[0.55, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05]]])
    targets = [{"boxes": torch.tensor([[0.45, 0.5, 0.2, 0.2]])}]
    outputs = {"pred_logits": logits, "pred_boxes": boxes, "aux_outputs": []}
    crit = make_criterion(WEIGHTS, iou_aware_class=True)
    loss = crit(outputs, targets, num_boxes=1.0)["loss_ce"]
    q = torch.tensor([[[1 / 3], [0.0]]])
    assert loss.item() == pytest.approx(quality_focal_loss(logits, q, 2.0).sum().item(), rel=1e-5)


def _grid_outputs(num_queries: int) -> dict:
    g = torch.linspace(0.1, 0.9, num_queries)
    boxes = torch.stack((g, g, torch.full_like(g, 0.1), torch.full_like(g, 0.1)), 1)[None]
    layer = {"pred_logits": torch.zeros(1, num_queries, 1), "pred_boxes": boxes}
    return {**layer, "aux_outputs": [dict(layer)]}


def test_aux_layers_get_k_matches_per_cell() -> None:
    targets = [{"boxes": torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]])}]
    crit = make_criterion(WEIGHTS, aux_layer_matches_per_cell=3)
    assert aux_layer_repeats(10, targets, 3) == 3
    assert aux_layer_repeats(5, targets, 3) == 2  # capped: 2 cells x 2 <= 5
    assert aux_layer_repeats(10, [{"boxes": torch.zeros(0, 4)}], 3) == 1
    # Final layer one-to-one: its loss equals the plain criterion's.
    plain = make_criterion(WEIGHTS)(_grid_outputs(10), targets, 2.0)
    o2m = crit(_grid_outputs(10), targets, 2.0)
    for name in WEIGHTS:
        assert o2m[name].item() == pytest.approx(plain[name].item(), rel=1e-6)
    # The aux layer's L1 is the mean over 6 matches (3 per cell), normalised by 2 x 3.
    outputs = _grid_outputs(10)
    aux_targets = [{"boxes": targets[0]["boxes"].repeat(3, 1)}]
    idx = make_matcher()(outputs["aux_outputs"][0], aux_targets)[0]
    assert len(idx[0]) == 6 and len(set(idx[0].tolist())) == 6
    pred = outputs["aux_outputs"][0]["pred_boxes"][0, idx[0]]
    expected_l1 = (pred - aux_targets[0]["boxes"][idx[1]]).abs().sum() / 6
    assert o2m["loss_bbox_0"].item() == pytest.approx(expected_l1.item(), rel=1e-5)
    with pytest.raises(ValueError, match="aux_layer_matches_per_cell"):
        make_criterion(WEIGHTS, aux_layer_matches_per_cell=0)


def test_render_scaled_enlarges_cells() -> None:
    small_image, small_label = generate_sample("nuclei", 6, seed=3, size=256)
    image, label = render_scaled("nuclei", 6, seed=3, cell_scale=2)
    assert image.shape == (3, 512, 512) and label.shape == (512, 512)
    assert np.array_equal(label[::2, ::2], small_label)
    assert np.array_equal(np.unique(label), np.unique(small_label))
    # Areas grow 4x exactly (nearest-neighbour label), intensities stay in range.
    ids, counts = np.unique(label[label > 0], return_counts=True)
    _, small_counts = np.unique(small_label[small_label > 0], return_counts=True)
    assert np.array_equal(counts, 4 * small_counts)
    assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
    assert np.abs(image[:, ::2, ::2] - small_image).mean() < 0.02
    with pytest.raises(ValueError, match="cell_scale"):
        render_scaled("nuclei", 6, seed=3, cell_scale=3)


def test_iou_aware_class_on_an_image_without_cells() -> None:
    # No matches: every query is pushed to 0 with the same quality focal loss.
    logits = torch.tensor([[[0.0], [2.0]]])
    outputs = {"pred_logits": logits, "pred_boxes": torch.rand(1, 2, 4) * 0.5 + 0.25,
               "aux_outputs": []}
    targets = [{"boxes": torch.zeros(0, 4)}]
    crit = make_criterion(WEIGHTS, iou_aware_class=True)
    losses = crit(outputs, targets, num_boxes=1.0)
    expected = quality_focal_loss(logits, torch.zeros_like(logits), 2.0).sum()
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
