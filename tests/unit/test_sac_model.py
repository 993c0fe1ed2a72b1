"""SAC model assembly (cellsam/models/sac.py): shapes, point decoding against
segment-anything's own `SamPredictor`, LoRA start equality, parts and the base identity."""

from __future__ import annotations

import hashlib
import warnings

import pytest
import torch

from cellsam.models.checkpoints import PACKAGED
from cellsam.models.sac import SAC_PARTS, base_identity, build_sac, key_part

LORA = {"rank": 2, "alpha": 4.0, "dropout": 0.0, "blocks": None}
UNET = {"input": "image", "base_channels": 4, "depth": 2}


def tiny_sac(lora=LORA, prompter=UNET, checkpoint=None, seed=0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_sac(sam={"variant": "tiny", "checkpoint": checkpoint, "image_size": 128},
                         lora=lora, prompter=prompter).eval()


def test_shapes_and_prompter_inputs():
    model = tiny_sac()
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        maps = model.prompt_maps(images)
        feats = model.trunk(images)
        emb = model.embed(feats)
    assert model.image_size == 128 and model.has_lora
    assert maps["foreground"].shape == (2, 1, 128, 128) == maps["centre"].shape
    assert feats.shape == (2, 96, 8, 8) and emb.shape == (2, 64, 8, 8)
    points = torch.tensor([[[10.0, 20.0], [50.0, 60.0]], [[100.0, 5.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, -1]])
    with torch.no_grad():
        low, iou = model.decode_points(emb[:1], points, labels)
    assert low.shape == (2, 32, 32) and iou.shape == (2,)
    with pytest.raises(ValueError, match="disagree"):
        model.decode_points(emb[:1], points, labels[:, :1])
    head = tiny_sac(prompter={"input": "features", "hidden": 8})
    with torch.no_grad():
        maps = head.prompt_maps(images)
    assert maps["foreground"].shape == (2, 1, 128, 128)
    with pytest.raises(ValueError, match="model.prompter.input"):
        tiny_sac(prompter={"input": "boxes"})
    assert not tiny_sac(lora=None).has_lora


def test_decode_points_equals_segment_anything_predictor():
    """The same logits as segment-anything's `SamPredictor.predict_torch` (reference code)
    for positive, negative and padded points, with non-zero LoRA adapters in the encoder."""
    from segment_anything import SamPredictor

    model = tiny_sac()
    with torch.no_grad():
        for p in model.part_parameters("lora"):
            p.normal_(0, 0.05)
    images = torch.rand(1, 3, 128, 128)
    points = torch.tensor([[[10.0, 20.0], [50.0, 60.0]], [[100.0, 5.0], [64.0, 64.0]]])
    labels = torch.tensor([[1, 0], [1, -1]])
    ref = SamPredictor(model.sam)
    ref.set_torch_image(images * 255.0, (128, 128))
    _, ref_iou, ref_low = ref.predict_torch(points, labels, multimask_output=False,
                                            return_logits=True)
    with torch.no_grad():
        low, iou = model.decode_points(model.embed(model.trunk(images)), points, labels)
    torch.testing.assert_close(low, ref_low[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(iou, ref_iou[:, 0], rtol=1e-5, atol=1e-5)


def test_zero_lora_starts_at_the_base_model():
    base = tiny_sac(lora=None)
    adapted = tiny_sac()  # same seed: same SAM weights; LoRA B = 0
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(base.trunk(images), adapted.trunk(images))


def test_parts_and_key_parts():
    model = tiny_sac()
    lora = model.part_parameters("lora")
    assert len(lora) == 4 * 4  # 4 attention blocks x (A_q, B_q, A_v, B_v)
    with pytest.raises(ValueError, match="unknown SAC part"):
        model.part_parameters("finder")
    by_part: dict[str, int] = {}
    for key in model.state_dict():
        by_part[key_part(key)] = by_part.get(key_part(key), 0) + 1
    assert set(by_part) == {*SAC_PARTS, "base"}
    assert by_part["lora"] == 16
    assert key_part("sam.image_encoder.blocks.0.attn.qkv.weight") == "base"
    assert key_part("sam.image_encoder.blocks.0.attn.qkv.lora_b_v") == "lora"
    assert key_part("sam.image_encoder.neck.0.weight") == "neck"
    assert key_part("sam.mask_decoder.iou_token.weight") == "mask_decoder"
    assert key_part("prompter.head.weight") == "prompter"


def test_base_identity(tmp_path):
    assert base_identity("tiny", None) is None
    packaged = base_identity("lite_medsam", "packaged")
    assert packaged["sha256"] == PACKAGED["lite_medsam"].sha256
    assert packaged["file"] == "lite_medsam.pth"
    path = tmp_path / "w.pth"
    path.write_bytes(b"abc")
    ident = base_identity("tiny", str(path))
    assert ident["sha256"] == hashlib.sha256(b"abc").hexdigest() and ident["file"] == "w.pth"
    with pytest.raises(FileNotFoundError, match="model.sam.checkpoint"):
        base_identity("tiny", str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="no packaged weights"):
        base_identity("tiny", "packaged")
