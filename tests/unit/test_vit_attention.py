"""SDPA ViT attention and per-block activation checkpointing (cellsam.models.vit_attention)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import Attention

from cellsam.models.sam import build_sam, trunk_features
from cellsam.models.vit_attention import SdpaAttention, use_vit_attention
from cellsam.utils.checkpoint import build_model_from_meta

ROOT = Path(__file__).resolve().parents[2]


def _tiny(image_size: int = 128, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no checkpoint given"
        return build_sam("tiny", image_size=image_size, **kwargs)


def _randomise_rel_pos(module: torch.nn.Module, seed: int = 0) -> None:
    """rel_pos tables start at zero, which would hide a wrong bias: fill them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "rel_pos" in name:
                p.copy_(torch.randn(p.shape, generator=g))


def _attentions(module):
    return [m for m in module.modules() if isinstance(m, Attention)]


@pytest.mark.parametrize("image_size", [128, 192])  # 192: 12x12 grid, windows of 8 padded
def test_sdpa_trunk_matches_standard_fp32(image_size):
    torch.manual_seed(0)
    standard = _tiny(image_size).image_encoder.train()
    _randomise_rel_pos(standard)
    sdpa = use_vit_attention(copy.deepcopy(standard), "sdpa")
    assert all(type(m) is SdpaAttention for m in _attentions(sdpa))
    assert all(type(m) is Attention for m in _attentions(standard))
    # windowed (8x8) and global blocks both present in the tiny variant
    assert {b.window_size for b in sdpa.blocks} == {0, 8}

    x = torch.randn(2, 3, image_size, image_size)
    x_a, x_b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_b = trunk_features(standard, x_a), trunk_features(sdpa, x_b)
    assert (out_a - out_b).abs().max().item() <= 1e-5
    # The bias matters here (else the comparison could not fail): zero tables differ.
    zeroed = copy.deepcopy(standard)
    for m in _attentions(zeroed):
        torch.nn.init.zeros_(m.rel_pos_h)
        torch.nn.init.zeros_(m.rel_pos_w)
    assert (trunk_features(zeroed, x) - out_a).abs().max().item() > 1e-2

    g = torch.randn_like(out_a)
    (out_a * g).sum().backward()
    (out_b * g).sum().backward()
    assert (x_a.grad - x_b.grad).abs().max().item() <= 1e-5
    for (name, pa), (_, pb) in zip(standard.named_parameters(), sdpa.named_parameters()):
        if pa.grad is not None:
            scale = max(1.0, pa.grad.abs().max().item())
            assert (pa.grad - pb.grad).abs().max().item() <= 1e-5 * scale, name


def test_sdpa_without_rel_pos_matches_standard():
    torch.manual_seed(0)
    standard = ImageEncoderViT(
        img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=4, use_rel_pos=False,
        window_size=4, global_attn_indexes=(1,), out_chans=16,
    ).eval()
    sdpa = use_vit_attention(copy.deepcopy(standard), "sdpa")
    assert not any(m.use_rel_pos for m in _attentions(sdpa))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (standard(x) - sdpa(x)).abs().max().item() <= 1e-5


def test_state_dict_unchanged_and_interchangeable():
    torch.manual_seed(0)
    standard = _tiny(attention="standard")
    _randomise_rel_pos(standard)
    sdpa = _tiny(attention="sdpa")
    assert any(type(m) is SdpaAttention for m in sdpa.modules())
    sd_a, sd_b = standard.state_dict(), sdpa.state_dict()
    assert list(sd_a) == list(sd_b)
    assert all(sd_a[k].shape == sd_b[k].shape for k in sd_a)
    assert "image_encoder.blocks.0.attn.rel_pos_h" in sd_b
    sdpa.load_state_dict(sd_a, strict=True)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        diff = trunk_features(standard.image_encoder, x) - trunk_features(sdpa.image_encoder, x)
    assert diff.abs().max().item() <= 1e-5
    # and back
    use_vit_attention(sdpa, "standard")
    assert not any(isinstance(m, SdpaAttention) for m in sdpa.modules())


def test_unknown_attention_rejected():
    with pytest.raises(ValueError, match="unknown ViT attention"):
        _tiny(attention="flash")


def _count_block_calls(encoder) -> list[int]:
    """Count block forwards, recomputations included (those skip module hooks)."""
    calls = [0]
    for block in encoder.blocks:

        def counted(x, forward=block.forward):
            calls[0] += 1
            return forward(x)

        block.forward = counted
    return calls


@pytest.mark.parametrize("attention", ["standard", "sdpa"])
def test_activation_checkpointing_gradients_match_plain(attention):
    torch.manual_seed(0)
    plain = _tiny(attention=attention).image_encoder.train()
    _randomise_rel_pos(plain)
    ckpt = copy.deepcopy(plain)
    ckpt.activation_checkpointing = True
    calls = _count_block_calls(ckpt)

    x = torch.randn(2, 3, 128, 128)
    g = torch.randn(2, 96, 8, 8)
    for enc in (plain, ckpt):
        (enc.neck(trunk_features(enc, x)).mean() + (trunk_features(enc, x) * g).sum()).backward()
    # each block ran forward twice per trunk call (two calls): once, then recomputed
    assert calls[0] == 2 * 2 * len(ckpt.blocks)
    for (name, pa), (_, pb) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert pa.grad is not None and pb.grad is not None, name
        assert (pa.grad - pb.grad).abs().max().item() <= 1e-6, name


def test_activation_checkpointing_off_in_eval_and_no_grad():
    enc = _tiny(activation_checkpointing=True).image_encoder
    assert enc.activation_checkpointing is True
    calls = _count_block_calls(enc)
    x = torch.randn(1, 3, 128, 128)
    enc.eval()
    trunk_features(enc, x).sum().backward()
    enc.train()
    with torch.no_grad():
        trunk_features(enc, x)
    assert calls[0] == 2 * len(enc.blocks)  # no recomputation in either
    assert _tiny().image_encoder.activation_checkpointing is False


def test_old_checkpoint_meta_without_the_keys_builds():
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model/tiny.yaml"), resolve=True)
    for key in ("attention", "activation_checkpointing"):
        cfg["sam"].pop(key, None)
    cfg["sam"]["image_size"] = 128
    model = build_model_from_meta({"model": cfg})
    enc = model.sam.image_encoder
    assert enc.activation_checkpointing is False
    assert all(type(m) is Attention for m in _attentions(enc))  # build_sam's default


def test_configs_expose_the_switches():
    for name in ("tiny", "paper", "released"):
        sam = OmegaConf.load(ROOT / f"conf/model/{name}.yaml").sam
        assert sam.attention in ("standard", "sdpa")
        assert sam.activation_checkpointing is False
