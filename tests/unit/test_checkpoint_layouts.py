"""Every SAM-family file layout loads by path, strictly; a wrong one fails listing the keys.

Each file is built here in exactly its release's layout: the tiny ViT stands for SAM /
MedSAM / micro-sam vit_b (the same keys at other widths), and the TinyViT variants at their
real width (their weights do not depend on the input size, so they are built at 64 px).
"""

from __future__ import annotations

import hashlib
import sys
import warnings

import pytest
import torch

from cellsam.models import checkpoints
from cellsam.models.checkpoints import (
    PackagedWeights,
    SamCheckpointError,
    encoder_kind,
    load_packaged_weights,
    load_sam_checkpoint,
    read_sam_weights,
)
from cellsam.models.sam import build_sam


def _sam(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    size = 64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_sam(variant, image_size=size)


def _state(variant: str) -> dict[str, torch.Tensor]:
    return _sam(variant, seed=1).state_dict()


def _equal(model, state) -> bool:
    own = model.state_dict()
    return own.keys() == state.keys() and all(torch.equal(own[k], state[k]) for k in own)


def _micro_sam_training(sd):  # torch_em: the SAM inside a wrapper module named `sam`
    return {"model_state": {f"sam.{k}": v for k, v in sd.items()},
            "decoder_state": {"decoder.out.weight": torch.zeros(3)}, "epoch": 10}


LAYOUTS = {
    # release: (encoder variant, how the release saves the state dict, container, ignored)
    "SAM vit_b/l/h": ("tiny", lambda sd: sd, "plain", ()),
    "MedSAM medsam_vit_b.pth": ("tiny", lambda sd: sd, "plain", ()),
    "MedSAM training checkpoint": (
        "tiny", lambda sd: {"model": sd, "optimizer": {"lr": 1e-4}, "epoch": 3},
        "nested model", ("epoch", "optimizer")),
    "micro-sam vit_b_lm (model zoo)": (
        "tiny", lambda sd: {"model_state": sd, "decoder_state": {"x": torch.ones(2)}},
        "micro-sam", ("decoder_state",)),
    "micro-sam torch_em training file": (
        "tiny", _micro_sam_training, "micro-sam", ("decoder_state", "epoch")),
    "micro-sam vit_t_lm": (
        "mobile_sam", lambda sd: {"model_state": sd, "decoder_state": {"x": torch.ones(2)}},
        "micro-sam", ("decoder_state",)),
    "MobileSAM mobile_sam.pt": ("mobile_sam", lambda sd: sd, "plain", ()),
    "LiteMedSAM lite_medsam.pth": ("lite_medsam", lambda sd: sd, "plain", ()),
    "LiteMedSAM training checkpoint": (
        "lite_medsam", lambda sd: {"model": sd, "epoch": 5, "loss": 0.1},
        "nested model", ("epoch", "loss")),
}


@pytest.mark.parametrize("release", sorted(LAYOUTS))
def test_each_release_layout_loads_strictly(release, tmp_path):
    variant, save, container, ignored = LAYOUTS[release]
    state = _state(variant)
    path = tmp_path / "weights.pth"
    torch.save(save(state), path)
    weights = read_sam_weights(path)
    assert (weights.container, weights.ignored) == (container, ignored)
    assert weights.encoder == {"tiny": "vit (width 96)"}.get(variant, variant)
    model = _sam(variant, seed=2)
    assert not _equal(model, state)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_sam_checkpoint(model, path)
    assert _equal(model, state)
    notes = [str(w.message) for w in caught]
    assert any("decoder_state" in n for n in notes) == ("decoder_state" in ignored)


def test_encoders_are_told_from_keys():
    def vit(width):
        return {"image_encoder.patch_embed.proj.weight": torch.empty(width, 3, 16, 16)}

    assert [encoder_kind(vit(w)) for w in (768, 1024, 1280)] == ["vit_b", "vit_l", "vit_h"]
    assert encoder_kind(_state("lite_medsam")) == "lite_medsam"
    assert encoder_kind(_state("mobile_sam")) == "mobile_sam"
    assert encoder_kind({"x": torch.zeros(1)}) == "unknown encoder"


def test_wrong_layout_lists_keys(tmp_path):
    lite = tmp_path / "lite_medsam.pth"
    torch.save(_state("lite_medsam"), lite)
    with pytest.raises(SamCheckpointError) as err:
        load_sam_checkpoint(_sam("mobile_sam"), lite)
    msg = str(err.value)
    assert str(lite) in msg
    assert "the file holds a lite_medsam encoder, the model a mobile_sam one" in msg
    assert ("missing keys (4): image_encoder.head.bias, image_encoder.head.weight, "
            "image_encoder.norm_head.bias, image_encoder.norm_head.weight") in msg
    assert ("shape mismatches (2): image_encoder.patch_embed.seq.0.c.weight (32, 3, 1, 1) vs "
            "model (32, 3, 3, 3), image_encoder.patch_embed.seq.2.c.weight (64, 32, 1, 1) vs "
            "model (64, 32, 3, 3)") in msg
    assert "unexpected keys" not in msg
    # a micro-sam ViT file into the TinyViT model: every encoder key differs
    vit = tmp_path / "vit_b_lm.pth"
    torch.save({"model_state": _state("tiny"), "decoder_state": {}}, vit)
    with pytest.raises(SamCheckpointError) as err:
        load_sam_checkpoint(_sam("lite_medsam"), vit)
    msg = str(err.value)
    assert "the file holds a vit (width 96) encoder, the model a lite_medsam one" in msg
    assert "missing keys (292): image_encoder.layers.0.blocks.0.conv1.bn.bias" in msg
    assert "unexpected keys (" in msg and "image_encoder.blocks.0.attn.proj.bias" in msg
    assert "... (" in msg  # long lists are cut, with the count


class Foreign:
    """Stands for any class a pickle may name (and so run code from)."""


def test_files_that_are_not_sam_weights(tmp_path):
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": Foreign()}, unsafe)
    with pytest.raises(SamCheckpointError, match="refused, the file holds objects other than"):
        read_sam_weights(unsafe)
    cellsam_ckpt = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": {}, "cellsam": {"stage": "finder"}}, cellsam_ckpt)
    with pytest.raises(SamCheckpointError, match="a cellsam training checkpoint.*finder_ckpt"):
        read_sam_weights(cellsam_ckpt)
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(1), "step": 3}, other)
    with pytest.raises(SamCheckpointError, match=r"no SAM weights found \(top-level keys: "
                                                 r"encoder.weight, step\)"):
        read_sam_weights(other)
    odd = tmp_path / "odd.pth"
    torch.save({"model": {"image_encoder.x": torch.zeros(1), "image_encoder.y": 3}}, odd)
    with pytest.raises(SamCheckpointError, match="not tensors: image_encoder.y"):
        read_sam_weights(odd)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SamCheckpointError, match="not a readable"):
        read_sam_weights(junk)


@pytest.fixture()
def fake_package(tmp_path, monkeypatch):
    """An installed package holding a weights file; importing it would fail, so the test
    also shows the loader never runs the package's code."""
    pkg = tmp_path / "site" / "fake_weights_pkg"
    (pkg / "asset").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('package code must not run')\n")
    path = pkg / "asset" / "w.pth"
    state = _state("lite_medsam")
    torch.save(state, path)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = PackagedWeights("fake-weights", "fake_weights_pkg", ("asset", "w.pth"), sha, "MIT")
    monkeypatch.setitem(checkpoints.PACKAGED, "fake", entry)
    return entry, state, path


def test_packaged_weights_checked_and_clear_errors(fake_package, monkeypatch):
    entry, state, path = fake_package
    model = _sam("lite_medsam", seed=3)
    load_packaged_weights(model, "fake")
    assert _equal(model, state) and "fake_weights_pkg" not in sys.modules
    monkeypatch.setitem(checkpoints.PACKAGED, "fake", PackagedWeights(
        entry.distribution, entry.package, entry.resource, "0" * 64, entry.licence))
    with pytest.raises(SamCheckpointError, match=f"has sha256 {entry.sha256}, expected 0000"):
        load_packaged_weights(model, "fake")
    monkeypatch.setitem(checkpoints.PACKAGED, "fake", PackagedWeights(
        entry.distribution, entry.package, ("asset", "gone.pth"), entry.sha256, entry.licence))
    with pytest.raises(SamCheckpointError, match="asset/gone.pth is missing from the installed"):
        load_packaged_weights(model, "fake")
    monkeypatch.setitem(checkpoints.PACKAGED, "fake", PackagedWeights(
        "not-installed", "not_installed_pkg_xyz", entry.resource, entry.sha256, entry.licence))
    with pytest.raises(SamCheckpointError, match="package not-installed is not installed"):
        load_packaged_weights(model, "fake")
    with pytest.raises(ValueError, match=r"SAM tiny: no packaged weights \(variants with them: "
                                         r"\['lite_medsam'\]\)"):
        build_sam("tiny", checkpoint="packaged")
