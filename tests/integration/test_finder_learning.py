"""Stage 1 learns: the FinderModule's own losses, optimiser and parameter groups fit a batch.

The held-out figure (validation box AP50 after the 5-minute quickstart stage 1) is measured by
tests/integration/test_quickstart.py; this test checks the part that must hold whatever the
tuning, in seconds: repeated steps on one batch cut the box losses.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conf_values import NO_AUGMENT, stage_module_args

from cellsam.data.datamodule import CellDataModule
from cellsam.models.cellsam import build_cellsam
from cellsam.systems.finder_module import FinderModule

NO_AUG = NO_AUGMENT


@pytest.mark.slow
def test_finder_module_fits_a_batch(synthetic_dir):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_cellsam(
            sam={"variant": "tiny", "image_size": 256},
            finder={"hidden_dim": 64, "ffn_dim": 128, "num_heads": 4, "num_encoder_layers": 1,
                    "num_decoder_layers": 2, "num_queries": 64, "position_init_gain": 10.0},
        )
    module = FinderModule(model, **stage_module_args("finder", lr=1e-3, lr_trunk=5e-4))
    dm = CellDataModule({"s": {"path": str(synthetic_dir)}}, batch_size=2, num_workers=0,
                        augment=NO_AUG, input_size=model.image_size)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()[0]))
    optimizer = module.configure_optimizers()["optimizer"]
    # parameter groups as configured: trunk at lr_trunk, detector at lr
    assert [g["lr"] for g in optimizer.param_groups] == [5e-4, 1e-3]
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))  # no Trainer
    history = []
    for _ in range(40):
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        history.append((float(loss), logged["train/loss_bbox"], logged["train/loss_giou"]))
    first, last = history[0], history[-1]
    print(f"loss {first[0]:.3f} -> {last[0]:.3f}; L1 {first[1]:.3f} -> {last[1]:.3f}; "
          f"GIoU {first[2]:.3f} -> {last[2]:.3f}")
    assert last[0] < 0.7 * first[0]
    assert last[1] < 0.6 * first[1]
    assert last[2] < 0.8 * first[2]
    # frozen in stage 1: SAM's neck, prompt encoder and mask decoder
    assert all(not p.requires_grad for p in model.part_parameters("neck"))
    assert all(p.grad is not None for p in model.part_parameters("trunk") if p.requires_grad)
