"""SAM builder: official key layout, checkpoint round trip, clear errors, trunk access."""

from __future__ import annotations

import warnings

import pytest
import torch

from cellsam.models.sam import (
    VARIANTS,
    SamCheckpointError,
    build_sam,
    load_sam_checkpoint,
    trunk_features,
)


def _tiny(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_sam("tiny", **kw)


def test_official_key_layout_on_meta_device():
    # ViT-B at its real size, without allocating weights.
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sam = build_sam("vit_b")
    keys = sam.state_dict().keys()
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"image_encoder", "prompt_encoder", "mask_decoder"}
    # A few keys of sam_vit_b_01ec64.pth with their released shapes.
    sd = sam.state_dict()
    assert tuple(sd["image_encoder.pos_embed"].shape) == (1, 64, 64, 768)
    assert tuple(sd["image_encoder.patch_embed.proj.weight"].shape) == (768, 3, 16, 16)
    assert tuple(sd["image_encoder.blocks.2.attn.rel_pos_h"].shape) == (127, 64)  # global block
    assert tuple(sd["image_encoder.blocks.0.attn.rel_pos_h"].shape) == (27, 64)  # window 14
    assert tuple(sd["image_encoder.neck.0.weight"].shape) == (256, 768, 1, 1)
    assert tuple(sd["mask_decoder.iou_token.weight"].shape) == (1, 256)
    assert len([k for k in keys if k.startswith("image_encoder.blocks.")]) == 12 * 14
    assert sum(p.numel() for p in sam.image_encoder.parameters()) == 89_670_912
    assert sum(p.numel() for p in sam.parameters()) == 93_735_472  # SAM ViT-B as released


def test_random_init_warns():
    with pytest.warns(UserWarning, match="random weights"):
        build_sam("tiny")


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    a = _tiny()
    path = tmp_path / "sam_tiny.pth"
    torch.save(a.state_dict(), path)  # plain state dict, as the official files are
    torch.manual_seed(1)
    b = _tiny()
    assert not torch.equal(
        a.image_encoder.patch_embed.proj.weight, b.image_encoder.patch_embed.proj.weight
    )
    load_sam_checkpoint(b, path)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    x = torch.rand(1, 3, 512, 512)
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a.image_encoder(x), b.image_encoder(x))
    c = _tiny(checkpoint=path)  # the builder loads the same file
    assert torch.equal(c.mask_decoder.iou_token.weight, a.mask_decoder.iou_token.weight)


def test_missing_key_is_refused_with_names(tmp_path):
    sd = _tiny().state_dict()
    del sd["image_encoder.neck.0.weight"]
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(SamCheckpointError) as err:
        load_sam_checkpoint(_tiny(), path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys (1): image_encoder.neck.0.weight" in msg
    assert "unexpected keys (1): extra.weight" in msg


def test_wrong_variant_and_bad_files(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(_tiny().state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = build_sam("tiny", image_size=256)  # different position-embedding size
    with pytest.raises(SamCheckpointError, match="shape mismatches"):
        load_sam_checkpoint(other, path)
    with pytest.raises(SamCheckpointError, match="not found"):
        load_sam_checkpoint(other, tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SamCheckpointError, match="not a readable"):
        load_sam_checkpoint(other, junk)
    with pytest.raises(ValueError, match="unknown SAM variant"):
        build_sam("vit_x")


def test_trunk_features_match_encoder_and_parts_train():
    sam = _tiny().eval()
    x = torch.randn(2, 3, 512, 512)
    feats = trunk_features(sam.image_encoder, x)
    v = VARIANTS["tiny"]
    assert feats.shape == (2, v.encoder.embed_dim, 32, 32)
    with torch.no_grad():
        assert torch.allclose(sam.image_encoder.neck(feats), sam.image_encoder(x), atol=1e-5)
    # Gradients flow through the parts (SAM's own forward would not).
    sam.image_encoder.neck(trunk_features(sam.image_encoder, x)).mean().backward()
    assert sam.image_encoder.patch_embed.proj.weight.grad is not None
    assert sam.image_encoder.neck[0].weight.grad is not None


def test_prompt_dim_override_widens_neck_prompts_and_decoder():
    sam = _tiny(image_size=64, prompt_dim=128)
    sd = sam.state_dict()
    assert tuple(sd["image_encoder.neck.0.weight"].shape) == (128, 96, 1, 1)
    assert tuple(sd["mask_decoder.iou_token.weight"].shape) == (1, 128)
    assert tuple(sd["mask_decoder.output_upscaling.3.weight"].shape) == (32, 16, 2, 2)
    # the trunk is unchanged, so stage-1 weights of the plain tiny model load into it
    plain = _tiny(image_size=64).state_dict()
    assert all(torch.Size(plain[k].shape) == v.shape for k, v in sd.items()
               if k.startswith("image_encoder.") and not k.startswith("image_encoder.neck"))
    image = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        emb = sam.image_encoder(sam.preprocess(image))
        sparse, dense = sam.prompt_encoder(None, torch.tensor([[8.0, 8.0, 40.0, 40.0]]), None)
        masks, iou = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense,
                                      multimask_output=False)
    assert emb.shape == (1, 128, 4, 4) and masks.shape == (1, 1, 16, 16) and iou.shape == (1, 1)
    for bad in (0, 100, 36):  # tiny: multiples of lcm(8, 2 x 4 heads) = 8
        with pytest.raises(ValueError, match="prompt_dim must be a positive multiple of 8"):
            _tiny(prompt_dim=bad)
