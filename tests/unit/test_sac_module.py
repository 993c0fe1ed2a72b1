"""SacModule pieces (cellsam/systems/sac_module.py): freezing per config, the prompter-only
mode, point coordinates, the per-image prompt generator, and refused configurations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conf_values import stage_module_args
from test_sac_model import tiny_sac

from cellsam.systems.sac_module import SacModule, label_to_input_points, point_rng


def _module(model=None, **overrides):
    return SacModule(model or tiny_sac(), **stage_module_args("sac", **overrides))


def _batch():
    from cellsam.data.datamodule import collate
    from cellsam.data.transforms import label_targets

    items = []
    for i in range(2):
        label = torch.zeros(256, 256, dtype=torch.int64)
        label[20:60, 30:80] = 1
        label[100 + 8 * i:160, 150:190] = 4
        items.append({"image": torch.rand(3, 128, 128), "label": label, "dataset": "toy",
                      "index": i, **label_targets(label)})
    return collate(items)


def _logged(module):
    out: dict[str, float] = {}
    module.log = lambda name, value, **kw: out.__setitem__(name, float(value))
    return out


def test_input_points_by_hand():
    # label 256 px -> input 128 px: pixel 0 covers input [0, 0.5) -> its centre is input
    # pixel -0.25 (centres at integers); pixel 255 -> 127.25.
    pts = torch.tensor([[[0.0, 0.0], [255.0, 10.0]]])
    out = label_to_input_points(pts, (256, 256), 128)
    torch.testing.assert_close(out, torch.tensor([[[-0.25, -0.25], [127.25, 4.75]]]))
    # non-square labels scale x by S / W and y by S / H
    out = label_to_input_points(torch.tensor([[1.5, 3.5]]), (64, 32), 128)
    torch.testing.assert_close(out, torch.tensor([[(2.0 * 4) - 0.5, (4.0 * 2) - 0.5]]))


def test_point_rng_is_per_image_and_step():
    draw = [point_rng(s, d, i).integers(1 << 30) for s, d, i in
            [(0, "a", 1), (0, "a", 1), (1, "a", 1), (0, "b", 1), (0, "a", 2)]]
    assert draw[0] == draw[1] and len(set(draw)) == 4


def test_freezing_follows_the_config():
    model = tiny_sac()
    _module(model, trainable=["lora", "mask_decoder"])
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in model.named_parameters()
                 if p.requires_grad}
    assert trainable == {"sam.image_encoder", "sam.mask_decoder", "prompter.down",
                         "prompter.up", "prompter.head"}
    lora = {id(p) for p in model.part_parameters("lora")}
    assert all(p.requires_grad == (id(p) in lora)
               for p in model.sam.image_encoder.parameters())
    _module(model, trainable=["prompt_encoder"], train_prompter=False)
    pe = model.sam.prompt_encoder
    assert pe.point_embeddings[0].weight.requires_grad and pe.not_a_point_embed.weight.requires_grad
    assert not pe.point_embeddings[2].weight.requires_grad  # box corners: no gradient
    assert not any(p.requires_grad for p in pe.mask_downscaling.parameters())
    assert not any(p.requires_grad for p in model.prompter.parameters())


def test_refused_configurations():
    with pytest.raises(ValueError, match="cannot train"):
        _module(trainable=["trunk"])
    with pytest.raises(ValueError, match="no LoRA adapters"):
        _module(tiny_sac(lora=None), trainable=["lora"])
    with pytest.raises(ValueError, match="nothing would train"):
        _module(train_sam=False, train_prompter=False)
    with pytest.raises(ValueError, match="n_positive"):
        _module(n_positive=0)
    with pytest.raises(TypeError, match="SAC model"):
        SacModule(torch.nn.Linear(1, 1), **stage_module_args("sac"))


def test_step_logs_every_term_and_gradients_reach_what_trains():
    module = _module(trainable=["lora", "mask_decoder"], loss_size=64)
    logged = _logged(module)
    loss = module.training_step(_batch(), 0)
    loss.backward()
    assert set(logged) == {"train/loss", "train/mask_focal", "train/mask_dice", "train/iou_mse",
                           "train/mask_loss", "train/masks_per_step", "train/fg_bce",
                           "train/fg_dice", "train/centre", "train/prompter_loss"}
    assert logged["train/masks_per_step"] == 4.0
    assert logged["train/loss"] == pytest.approx(
        logged["train/mask_loss"] + logged["train/prompter_loss"], rel=1e-6)
    assert all(p.grad is not None for p in module.model.part_parameters("lora"))
    assert all(p.grad is not None for p in module.model.part_parameters("prompter"))
    assert all(p.grad is None for p in module.model.part_parameters("neck"))


def test_prompter_only_mode_skips_sam(monkeypatch):
    from conftest import count_calls

    module = _module(train_sam=False)
    calls = count_calls(monkeypatch, module.model, "trunk")
    logged = _logged(module)
    loss = module.training_step(_batch(), 0)
    assert calls[0] == 0  # the U-Net prompter reads the image: no trunk pass at all
    assert set(logged) == {"train/loss", "train/fg_bce", "train/fg_dice", "train/centre",
                           "train/prompter_loss"}
    assert float(loss) == pytest.approx(logged["train/prompter_loss"])
    assert [n for n, p in module.model.named_parameters() if p.requires_grad] == \
        [n for n, _ in module.model.prompter.named_parameters(prefix="prompter")]


def test_validation_records_dice_by_hand():
    module = _module().eval()
    batch = _batch()
    # a prompter that says "foreground" exactly on cell 1 of each label
    fg = torch.full((2, 1, 256, 256), -10.0)
    fg[:, :, 20:60, 30:80] = 10.0
    module.model.prompt_maps = lambda images, features=None: {"foreground": fg,
                                                              "centre": fg.clone()}
    with torch.no_grad():
        module.validation_step(batch, 0)
    rec = module._val_records
    cell1, cell4 = 40 * 50, [60 * 40, 52 * 40]  # cell 4: rows 100-159, then 108-159
    for i in range(2):
        assert rec[i]["fg_inter"] == cell1
        assert rec[i]["fg_total"] == 2 * cell1 + cell4[i]
        assert rec[i]["cells"] == 2 and 0 <= rec[i]["iou_sum"] <= 2
    assert np.isclose(2 * rec[0]["fg_inter"] / rec[0]["fg_total"], 4000 / 6400)


def test_training_without_prompts_learns_each_tile_foreground():
    import torch.nn.functional as F

    module = _module(trainable=["lora", "mask_decoder"], train_with_prompts=False,
                     train_prompter=False, loss_size=64)
    logged = _logged(module)
    batch = _batch()
    batch["targets"][1]["ids"] = batch["targets"][1]["ids"][:0]  # no cell: still one mask
    batch["labels"][1] = 0
    seen = []
    decode_points = module.model.decode_points
    module.model.decode_points = lambda *a, **k: seen.append(a) or decode_points(*a, **k)
    torch.manual_seed(0)
    loss = module.training_step(batch, 0)
    assert not seen and logged["train/masks_per_step"] == 2.0  # one unprompted mask per tile
    # the same loss by hand: the unprompted decoding against each tile's foreground
    with torch.no_grad():
        emb = module.model.embed(module.model.trunk(batch["images"]))
        logits, ious = [], []
        for i in range(2):
            low, iou = module.model.decode_unprompted(emb[i:i + 1])
            logits.append(F.interpolate(low[:, None], size=(64, 64), mode="bilinear",
                                        align_corners=False)[:, 0])
            ious.append(iou)
        fg = (batch["labels"] > 0).float()[:, None]
        target = F.interpolate(fg, size=(64, 64), mode="area")[:, 0]
        want = module.criterion(torch.cat(logits), torch.cat(ious), target, torch.tensor(2.0))
    assert float(loss) == pytest.approx(float(module.criterion.weighted_total(want)), rel=1e-5)
    assert target[0].sum() > 0 and target[1].sum() == 0
