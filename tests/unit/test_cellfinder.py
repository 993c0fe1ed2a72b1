"""CellFinder, its Anchor DETR transformer and RCDA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conf_values import make_criterion

from cellsam.models.finder import (
    CellFinder,
    MultiheadRCDA,
    group_norm_groups,
)
from cellsam.models.finder.position import pos2posemb1d, pos2posemb2d
from cellsam.models.finder.rcda import rcda_combine

TINY = dict(
    hidden_dim=64,
    ffn_dim=128,
    num_heads=4,
    num_encoder_layers=2,
    num_decoder_layers=2,
    num_queries=100,
)
WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def _targets(batch_sizes: list[int], seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"boxes": torch.rand(n, 4, generator=g) * 0.3 + 0.2} for n in batch_sizes]


def _naive_rcda(module: MultiheadRCDA, q_row, q_col, k_row_map, k_col_map, value):
    """Explicit ``[Q, H, W]`` attention = outer product of the row and column softmaxes.

    Keys are full ``[B, H, W, C]`` maps projected *then* averaged, as Anchor DETR does.
    """
    c, h = module.embed_dim, module.num_heads
    d = c // h
    w_all, b_all = module.in_proj_weight, module.in_proj_bias
    proj = [(w_all[i * c : (i + 1) * c], b_all[i * c : (i + 1) * c]) for i in range(5)]
    qr = F.linear(q_row, *proj[0]) * d**-0.5
    qc = F.linear(q_col, *proj[1]) * d**-0.5
    kr = F.linear(k_row_map, *proj[2]).mean(dim=1)  # [B, W, C]
    kc = F.linear(k_col_map, *proj[3]).mean(dim=2)  # [B, H, C]
    v = F.linear(value, *proj[4])  # [B, H, W, C]
    bsz, q = q_row.shape[:2]
    outs = []
    for head in range(h):
        sl = slice(head * d, (head + 1) * d)
        a_row = torch.einsum("bqc,bxc->bqx", qr[..., sl], kr[..., sl]).softmax(-1)
        a_col = torch.einsum("bqc,byc->bqy", qc[..., sl], kc[..., sl]).softmax(-1)
        full = a_col[:, :, :, None] * a_row[:, :, None, :]  # [B, Q, H, W]
        outs.append(torch.einsum("bqyx,byxc->bqc", full, v[..., sl]))
    return module.out_proj(torch.cat(outs, dim=-1))


# 8-dim heads: maps up to 8 wide use the full weights, wider ones the two-step contraction.
@pytest.mark.parametrize("height,width", [(5, 7), (7, 5), (6, 6), (12, 9), (9, 12), (10, 10)])
def test_rcda_equals_naive_full_attention(height: int, width: int) -> None:
    torch.manual_seed(0)
    module = MultiheadRCDA(32, 4).eval()
    b, q, c = 2, 9, 32
    q_row, q_col = torch.randn(b, q, c), torch.randn(b, q, c)
    k_row_map, k_col_map = torch.randn(b, height, width, c), torch.randn(b, height, width, c)
    value = torch.randn(b, height, width, c)
    ours = module(q_row, q_col, k_row_map.mean(1), k_col_map.mean(2), value)
    ref = _naive_rcda(module, q_row, q_col, k_row_map, k_col_map, value)
    assert ours.shape == (b, q, c)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_group_norm_groups_rule() -> None:
    assert [group_norm_groups(c) for c in (256, 64, 96, 48, 20, 7)] == [32, 32, 32, 24, 20, 7]


def test_position_embeddings() -> None:
    pos = torch.tensor([0.0, 0.25])
    emb = pos2posemb1d(pos, 8)
    assert emb.shape == (2, 8)
    # Interleaved sin/cos of 2*pi*x / 10000^(2k/8): first pair at frequency 1.
    torch.testing.assert_close(emb[1, :2], torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(emb[0], torch.tensor([0.0, 1.0] * 4))
    emb2 = pos2posemb2d(torch.tensor([[0.25, 0.0]]), 8)
    torch.testing.assert_close(emb2[0, :8], emb[0])  # y first
    torch.testing.assert_close(emb2[0, 8:], emb[1])
    assert pos2posemb1d(pos.bfloat16(), 8).dtype == torch.float32


def test_tiny_output_shapes_and_initial_boxes() -> None:
    torch.manual_seed(0)
    model = CellFinder(96, num_patterns=2, **TINY).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 96, 8, 8))
    q = 200
    assert model.num_queries == q
    assert out["pred_logits"].shape == (2, q, 1) and out["pred_boxes"].shape == (2, q, 4)
    assert len(out["aux_outputs"]) == 1
    assert out["aux_outputs"][0]["pred_boxes"].shape == (2, q, 4)
    # Zero-initialised last box layer: centres on the anchors, sides sigmoid(-2).
    anchors = model.transformer.position.weight
    torch.testing.assert_close(out["pred_boxes"][0, :100, :2], anchors, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["pred_boxes"][1, 100:, :2], anchors, atol=1e-5, rtol=0)
    wh = out["pred_boxes"][..., 2:]
    torch.testing.assert_close(wh, torch.full_like(wh, 1 / (1 + math.exp(2.0))))
    assert torch.allclose(model.class_embed.bias, torch.tensor(-math.log(99.0)))
    assert model.input_proj[1].num_groups == 32
    assert ((anchors >= 0) & (anchors <= 1)).all()


def test_aux_loss_off_gives_same_final_output() -> None:
    torch.manual_seed(0)
    with_aux = CellFinder(96, **TINY).eval()
    without = CellFinder(96, aux_loss=False, **TINY).eval()
    without.load_state_dict(with_aux.state_dict())
    x = torch.randn(1, 96, 8, 8)
    with torch.no_grad():
        a, b = with_aux(x), without(x)
    assert b["aux_outputs"] == []
    torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"])
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"])


def test_paper_size_shapes_on_meta_device() -> None:
    with torch.device("meta"):
        model = CellFinder(768)  # paper defaults: 256 / 1024 / 8 heads / 6+6 / 3500 queries
        out = model(torch.empty(4, 768, 64, 64))
    assert out["pred_logits"].shape == (4, 3500, 1)
    assert out["pred_boxes"].shape == (4, 3500, 4)
    assert len(out["aux_outputs"]) == 5
    assert all(a["pred_logits"].shape == (4, 3500, 1) for a in out["aux_outputs"])


def test_paper_widths_real_forward_on_small_map() -> None:
    torch.manual_seed(0)
    model = CellFinder(768, num_encoder_layers=1, num_decoder_layers=2).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 768, 8, 8))
    assert out["pred_boxes"].shape == (1, 3500, 4) and len(out["aux_outputs"]) == 1
    assert torch.isfinite(out["pred_boxes"]).all() and torch.isfinite(out["pred_logits"]).all()


def test_gradients_reach_features_and_every_parameter() -> None:
    torch.manual_seed(0)
    model = CellFinder(96, num_patterns=2, **TINY).train()
    # The zero-initialised last box layer blocks gradient to the layers before it at
    # step 0 (by design); give it weights so every path is exercised.
    torch.nn.init.normal_(model.bbox_embed.layers[-1].weight, std=0.01)
    features = torch.randn(2, 96, 8, 8, requires_grad=True)
    criterion = make_criterion(WEIGHTS)
    out = model(features)
    losses = criterion(out, _targets([5, 0]), num_boxes=5.0)
    criterion.weighted_total(losses).backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bf16_autocast_forward_backward() -> None:
    torch.manual_seed(0)
    model = CellFinder(96, **TINY).train()
    criterion = make_criterion(WEIGHTS)
    features = torch.randn(1, 96, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(features)
        losses = criterion(out, _targets([3]), num_boxes=3.0)
        total = criterion.weighted_total(losses)
    assert out["pred_logits"].dtype == torch.bfloat16
    assert out["pred_boxes"].dtype == torch.float32  # box decoding kept in float32
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_rejects_bad_widths() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        CellFinder(8, hidden_dim=66, num_heads=2)


@pytest.mark.parametrize("height,width", [(4, 6), (6, 4), (12, 9), (9, 12)])
def test_rcda_combine_paths_equal_the_einsum(height: int, width: int) -> None:
    g = torch.Generator().manual_seed(1)
    b, h, q, d = 2, 3, 5, 6  # maps up to 6 wide take the full-weights path
    attn_row = torch.rand(b, h, q, width, generator=g).softmax(-1)
    attn_col = torch.rand(b, h, q, height, generator=g).softmax(-1)
    value = torch.randn(b, h, height, width, d, generator=g)
    expected = torch.einsum("bhqy,bhqx,bhyxd->bhqd", attn_col, attn_row, value)
    torch.testing.assert_close(rcda_combine(attn_row, attn_col, value), expected)
