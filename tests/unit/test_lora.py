"""LoRA on the q/v projections of SAM ViT and TinyViT attention (`cellsam.models.lora`)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cellsam.models.lora import (
    LoRAQKV,
    apply_lora,
    attention_modules,
    file_sha256,
    load_lora_checkpoint,
    lora_checkpoint,
    lora_state_dict,
    merge_lora,
)
from cellsam.models.sam import build_sam
from cellsam.models.tinyvit import LITE_MEDSAM, TinyViT, WindowAttention

SIZE = 64


def tiny_vit_encoder() -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_sam("tiny", image_size=SIZE).image_encoder.eval()


def tinyvit_encoder() -> nn.Module:
    torch.manual_seed(0)
    return TinyViT(LITE_MEDSAM, SIZE, out_chans=32).eval()


ENCODERS = {"sam_vit": tiny_vit_encoder, "tinyvit": tinyvit_encoder}


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def train_steps(enc: nn.Module, x: torch.Tensor, steps: int = 3) -> None:
    params = [p for p in enc.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    with torch.no_grad():
        target = torch.randn_like(enc(x))
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(enc(x), target).backward()
        opt.step()


@pytest.mark.parametrize("name", list(ENCODERS))
def test_zero_init_is_bit_identical_and_freezes_base(name):
    enc = ENCODERS[name]()
    x = images()
    with torch.no_grad():
        before = enc(x)
    n_attn = len(attention_modules(enc))
    names = apply_lora(enc, rank=4, alpha=8.0)
    assert n_attn == (4 if name == "sam_vit" else 10)  # tiny ViT depth 4; TinyViT 2+6+2
    assert len(names) == 4 * n_attn
    assert all(".qkv.lora_" in n for n in names)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == set(names)
    with torch.no_grad():
        after = enc(x)
    assert torch.equal(before, after)
    # Base state-dict keys are unchanged, LoRA keys are added.
    assert all(isinstance(a.qkv, LoRAQKV) for a in attention_modules(enc))
    assert set(lora_state_dict(enc)) == set(names)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_training_changes_output_grads_only_on_lora_and_merge(name):
    enc = ENCODERS[name]()
    x = images()
    with torch.no_grad():
        base_out = enc(x)
    base_sd = {k: v.clone() for k, v in enc.state_dict().items()}
    names = apply_lora(enc, rank=2, alpha=4.0, blocks=[0, 2])
    assert len(names) == 8
    train_steps(enc, x)
    for n, p in enc.named_parameters():
        if n in names:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    # Base weights untouched.
    for k, v in enc.state_dict().items():
        if k in base_sd:
            assert torch.equal(v, base_sd[k]), k
    with torch.no_grad():
        adapted = enc(x)
        assert (adapted - base_out).abs().max() > 1e-4
        merge_lora(enc)
        merged = enc(x)
    assert not any(isinstance(m, LoRAQKV) for m in enc.modules())
    assert set(enc.state_dict()) == set(base_sd)
    assert torch.allclose(merged, adapted, atol=1e-5, rtol=0)
    assert (merged - adapted).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", list(ENCODERS))
def test_only_q_and_v_slices_change(name):
    enc = ENCODERS[name]()
    apply_lora(enc, rank=4, alpha=4.0)
    x = images()
    train_steps(enc, x)
    attn = attention_modules(enc)[1]
    m = attn.qkv
    dim = m.in_features
    tok = torch.randn(5, 7, dim)
    with torch.no_grad():
        out = m(tok)
        base = F.linear(tok, m.weight, m.bias)
    if isinstance(attn, WindowAttention):
        h, d = attn.num_heads, attn.head_dim
        o, b = out.view(5, 7, h, 3, d), base.view(5, 7, h, 3, d)
        q, k, v = (o[..., i, :] for i in range(3))
        bq, bk, bv = (b[..., i, :] for i in range(3))
    else:
        q, k, v = out[..., :dim], out[..., dim:2 * dim], out[..., 2 * dim:]
        bq, bk, bv = base[..., :dim], base[..., dim:2 * dim], base[..., 2 * dim:]
    assert torch.equal(k, bk)
    assert (q - bq).abs().max() > 1e-4
    assert (v - bv).abs().max() > 1e-4
    # Every query and value row moves (all heads adapted, not only the first).
    assert ((q - bq).abs().amax(dim=(0, 1)) > 0).all()
    assert ((v - bv).abs().amax(dim=(0, 1)) > 0).all()


def test_scale_by_hand_vit_layout():
    from segment_anything.modeling.image_encoder import Attention

    attn = Attention(dim=4, num_heads=2, qkv_bias=True)
    holder = nn.Module()
    holder.attn = attn
    apply_lora(holder, rank=2, alpha=6.0)  # scale 3
    m = attn.qkv
    assert m.scale == 3.0
    with torch.no_grad():
        m.lora_a_q.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        m.lora_b_q.copy_(torch.tensor([[1.0, 0], [0, 0], [0, 2.0], [0, 0]]))
        m.lora_a_v.copy_(torch.tensor([[0, 0, 0, 1.0], [0, 0, 0, 0]]))
        m.lora_b_v.copy_(torch.tensor([[0, 0], [0, 0], [0, 0], [5.0, 0]]))
        x = torch.tensor([[2.0, 3.0, 0.0, 7.0]])
        delta = m(x) - F.linear(x, m.weight, m.bias)
    want = torch.zeros(1, 12)
    want[0, 0] = 3 * 1 * 2.0      # q row 0: B_q[0,0] * (A_q x)[0] = 2
    want[0, 2] = 3 * 2 * 3.0      # q row 2: B_q[2,1] * (A_q x)[1] = 6
    want[0, 8 + 3] = 3 * 5 * 7.0  # v row 3 at offset 2*dim
    assert torch.allclose(delta, want, atol=1e-5)
    assert delta[0, 4:8].abs().max() == 0  # keys
    w = m.delta_weight()
    assert w[0, 0] == 3.0 and w[2, 1] == 6.0 and w[11, 3] == 15.0
    assert w.abs().sum() == 3.0 + 6.0 + 15.0


def test_scale_by_hand_tinyvit_layout():
    attn = WindowAttention(dim=4, num_heads=2, window=2)  # head_dim 2: [q0 k0 v0 q1 k1 v1]
    holder = nn.Module()
    holder.attn = attn
    apply_lora(holder, rank=1, alpha=2.0)  # scale 2
    m = attn.qkv
    assert m.q_index.tolist() == [0, 1, 6, 7]
    assert m.v_index.tolist() == [4, 5, 10, 11]
    with torch.no_grad():
        m.lora_a_q.copy_(torch.tensor([[1.0, 1.0, 0, 0]]))
        m.lora_b_q.copy_(torch.tensor([[0.0], [0.0], [1.0], [0.0]]))  # head 1, q dim 0
        m.lora_a_v.copy_(torch.tensor([[0, 0, 1.0, 0]]))
        m.lora_b_v.copy_(torch.tensor([[0.0], [4.0], [0.0], [0.0]]))  # head 0, v dim 1
        x = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
        delta = m(x) - F.linear(x, m.weight, m.bias)
    want = torch.zeros(1, 12)
    want[0, 6] = 2 * 1 * 3.0   # head 1 q dim 0: A_q x = 3
    want[0, 5] = 2 * 4 * 3.0   # head 0 v dim 1: A_v x = 3
    assert torch.allclose(delta, want, atol=1e-6)


def test_dropout_applies_to_lora_input_only():
    enc = tiny_vit_encoder()
    apply_lora(enc, rank=2, alpha=2.0, dropout=0.5)
    m = attention_modules(enc)[0].qkv
    with torch.no_grad():
        m.lora_b_q.fill_(1.0)
    x = torch.randn(3, m.in_features)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    b = m(x)
    assert not torch.equal(a, b)
    # Keys (no adapter) never see dropout.
    d = m.in_features
    assert torch.equal(a[:, d:2 * d], F.linear(x, m.weight, m.bias)[:, d:2 * d])


def test_blocks_out_of_range_and_double_apply():
    enc = tiny_vit_encoder()
    with pytest.raises(ValueError, match="out of range"):
        apply_lora(enc, rank=2, alpha=2.0, blocks=[4])
    apply_lora(enc, rank=2, alpha=2.0, blocks=[1])
    with pytest.raises(ValueError, match="already"):
        apply_lora(enc, rank=2, alpha=2.0)


def test_checkpoint_roundtrip_and_refuses_other_base(tmp_path):
    base_a, base_b = tmp_path / "base_a.pth", tmp_path / "base_b.pth"
    base_a.write_bytes(b"weights of base A" * 1000)
    base_b.write_bytes(b"weights of base B" * 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        sam = build_sam("tiny", image_size=SIZE)
    apply_lora(sam.image_encoder, rank=2, alpha=4.0, blocks=[0, 3])
    with torch.no_grad():
        for p in sam.image_encoder.parameters():
            if p.requires_grad:
                p.normal_()
    ckpt = lora_checkpoint(sam, base_a)
    assert ckpt["base"] == {"file": "base_a.pth", "sha256": file_sha256(base_a)}
    assert ckpt["config"] == {"rank": 2, "alpha": 4.0, "dropout": 0.0, "blocks": [0, 3],
                              "module": "image_encoder"}
    assert len(ckpt["lora"]) == 8
    assert all(k.startswith("image_encoder.blocks.") for k in ckpt["lora"])
    n_lora = sum(t.numel() for t in ckpt["lora"].values())
    assert n_lora == 2 * 4 * (2 * 96)  # 2 blocks x (A_q, B_q, A_v, B_v) each 2 x 96
    path = tmp_path / "lora.pt"
    torch.save(ckpt, path)
    loaded = torch.load(path, weights_only=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        fresh = build_sam("tiny", image_size=SIZE)
    with pytest.raises(ValueError) as err:
        load_lora_checkpoint(fresh, loaded, base_b)
    msg = str(err.value)
    assert "base_a.pth" in msg and "base_b.pth" in msg
    assert file_sha256(base_a) in msg and file_sha256(base_b) in msg
    assert not any(isinstance(m, LoRAQKV) for m in fresh.modules())

    # A renamed copy of the right base loads (identity is the content).
    copy = tmp_path / "renamed.pth"
    copy.write_bytes(base_a.read_bytes())
    keys = load_lora_checkpoint(fresh, loaded, copy)
    assert keys == sorted(ckpt["lora"])
    got = lora_state_dict(fresh)
    assert all(torch.equal(got[k], ckpt["lora"][k]) for k in ckpt["lora"])
    x = images(1)
    with torch.no_grad():
        assert torch.equal(sam.image_encoder.eval()(x), fresh.image_encoder.eval()(x))

    # An adapted model with another rank is refused.
    other = tiny_vit_encoder()
    holder = nn.Module()
    holder.image_encoder = other
    apply_lora(other, rank=3, alpha=4.0, blocks=[0, 3])
    with pytest.raises(ValueError, match="configuration"):
        load_lora_checkpoint(holder, loaded, base_a)


def test_file_sha256_streams_in_chunks(tmp_path):
    import hashlib

    p = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000
    p.write_bytes(data)
    assert file_sha256(p, chunk=1000) == hashlib.sha256(data).hexdigest()
