"""Stage 1 then stage 2 through the real configs (Hydra compose + `train()`), on CPU.

Stage 2 starts from the stage-1 checkpoint file that `train()` wrote, as a user would. The
tiny model has no pretrained SAM: its prompt encoder and mask decoder are random, and a
random decoder cannot be steered by training only the neck (the paper's stage 2 relies on
SAM's pretrained decoder; neck-only training stays at mask IoU ~0). This test therefore
trains SAM without its trunk (`trainable=[neck, prompt_encoder, mask_decoder]`, one of the
config's options) with a Dice loss (SAM's 20:1 focal:Dice first drives a from-scratch
decoder to all-background masks, where it stalls), on one fixed image (`overfit_batches`,
the project's overfit check). It shows that the stage learns box-prompted masks and that
its checkpoint holds what inference needs; it does not show generalisation (a random tiny
SAM needs far more than a few CPU minutes for that; the unseen-image figure is printed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conf_values import stage_module_args
from tiny_train import run_train

NO_AUGMENT = ["data.augment.hflip=0", "data.augment.vflip=0", "data.augment.rot90=false",
              "data.augment.zoom_p=0", "data.augment.gamma_p=0", "data.augment.noise_p=0",
              "data.augment.blur_p=0"]



def sam_module(model, **overrides):
    """A SamModule with the stage config's arguments and `overrides`."""
    from cellsam.systems.sam_module import SamModule

    return SamModule(model, **stage_module_args("sam", **overrides))


@torch.no_grad()
def gt_box_mask_iou(model, images: torch.Tensor, labels: np.ndarray) -> float:
    """Mean over cells of the IoU between the mask decoded from the cell's true box
    (logit > 0, upsampled to the label size) and the cell's true mask."""
    from cellsam.inference.decode import decode_batched, upsample_full
    from cellsam.ops.masks import label_boxes_xyxy

    s = model.image_size
    ious = []
    emb = model.embed(model.trunk(images))
    for i, lab in enumerate(labels):
        boxes, ids = label_boxes_xyxy(lab)
        h, w = lab.shape
        scale = torch.tensor([s / w, s / h, s / w, s / h])
        logits, _ = decode_batched(model, emb[i:i + 1], torch.from_numpy(boxes) * scale)
        pred = (upsample_full(logits, (h, w)) > 0).numpy()
        true = lab[None] == ids[:, None, None]
        inter = (pred & true).sum((1, 2))
        union = (pred | true).sum((1, 2))
        ious.extend(inter / np.maximum(union, 1))
    return float(np.mean(ious))


@pytest.mark.slow
def test_stage1_then_stage2_learns_masks(synthetic_dir, tmp_path):
    from cellsam.data.format import open_split
    from cellsam.inference import CellSAMPredictor, InferenceSettings, resolve_settings
    from cellsam.utils.checkpoint import load_model

    threads = torch.get_num_threads()
    # With more runnable processes than cores, OpenMP threads spin-wait and every op gets
    # ~10x slower: one thread is then much faster than two.
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        torch.set_num_threads(1)
    common = [f"data.datasets.synthetic.path={synthetic_dir}", "~data.datasets.synthetic.generate",
              "data.num_workers=0", "model=tiny", *NO_AUGMENT]
    try:
        s1 = run_train(["stage=finder", f"paths.output_dir={tmp_path / 's1'}", *common,
                        "data.batch_size=2",
                        "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
                        "+trainer.limit_val_batches=1", "model.finder.num_queries=64"])
        assert Path(s1["best_path"]).is_file()
        s2 = run_train([
            "stage=sam", f"paths.output_dir={tmp_path / 's2'}", *common,
            f"finder_ckpt={s1['best_path']}", "data.batch_size=1",
            "stage.module.trainable=[neck,prompt_encoder,mask_decoder]",
            "stage.module.lr=1e-3", "stage.module.box_jitter=0.0",
            "stage.module.loss_weights={mask_focal:0.0,mask_dice:1.0,iou_mse:1.0}",
            "+trainer.overfit_batches=1", "trainer.max_epochs=250",
            "trainer.check_val_every_n_epoch=125", "trainer.log_every_n_steps=20",
        ])
    finally:
        torch.set_num_threads(threads)

    # Lightning's overfit_batches also fixes one *val* batch: the logged metric is on val
    # images; the trained batch is measured here, on the last checkpoint (the best one is
    # chosen by that val metric).
    logged = s2["metrics"]["val/all/mask_iou"]
    last = Path(s2["best_path"]).parent / "last.ckpt"
    model, meta = load_model(last)
    model.eval()
    # the fixed batch: the first training image (overfit_batches does not shuffle)
    train = open_split(synthetic_dir, "train")
    images = torch.from_numpy(np.asarray(train.images[:1]))
    labels = np.asarray(train.labels[:1, 0])
    iou = gt_box_mask_iou(model, images, labels)
    val = open_split(synthetic_dir, "val")
    val_iou = gt_box_mask_iou(model, torch.from_numpy(np.asarray(val.images[:])),
                              np.asarray(val.labels[:, 0]))
    print(f"\nstage-2 mean mask IoU with ground-truth boxes: {iou:.3f} on the trained batch "
          f"; {val_iou:.3f} on the unseen val split (logged val/all/mask_iou {logged:.3f})")
    assert iou >= 0.75

    # the checkpoint: stage 2, everything for inference, the frozen trunk and CellFinder intact
    assert meta["stage"] == "sam" and meta["input_size"] == 512
    assert resolve_settings(meta["inference"]) == InferenceSettings.from_preset("paper")
    stage1, _ = load_model(s1["best_path"])
    for part in ("trunk", "finder"):
        for a, b in zip(stage1.part_parameters(part), model.part_parameters(part)):
            assert torch.equal(a, b), f"{part} changed in stage 2"
    assert not all(torch.equal(a, b) for a, b in zip(stage1.part_parameters("neck"),
                                                     model.part_parameters("neck")))
    predictor = CellSAMPredictor.from_checkpoint(last, device="cpu",
                                                 box_threshold=0.0, max_detections=8)
    result = predictor.predict(np.asarray(val.images[0]))
    assert result.labels.shape == (512, 512)


def _tiny_model():
    import warnings

    from cellsam.models.cellsam import build_cellsam

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_cellsam(sam={"variant": "tiny", "checkpoint": None},
                             finder={"hidden_dim": 32, "ffn_dim": 64, "num_heads": 4,
                                     "num_encoder_layers": 1, "num_decoder_layers": 1,
                                     "num_queries": 16})


def _batch():
    from cellsam.data.datamodule import collate
    from cellsam.data.transforms import label_targets

    items = []
    for i in range(2):
        label = torch.zeros(512, 512, dtype=torch.int64)
        label[40:90, 50:120] = 1
        label[200 + 10 * i:260, 300:330] = 7
        items.append({"image": torch.rand(3, 512, 512), "label": label, "dataset": "toy",
                      "index": i, **label_targets(label)})
    return collate(items)


def test_sam_module_freezing_loss_and_gradients():
    from cellsam.systems.sam_module import jitter_boxes

    model = _tiny_model()
    module = sam_module(model, max_boxes_per_image=1, box_jitter=0.1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.sam.image_encoder.neck.named_parameters(
        prefix="sam.image_encoder.neck")}
    loss = module.training_step(_batch(), 0)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(p.grad is not None for p in model.part_parameters("neck"))
    assert all(p.grad is None for p in model.part_parameters("trunk"))
    # cell IoU of the validation path: one value per box, in [0, 1]
    batch = _batch()
    with torch.no_grad():
        emb = module.embeddings({"images": batch["images"][:1]})
        gt = batch["labels"][0][None] == batch["targets"][0]["ids"][:, None, None]
        ious = module.cell_ious(emb, batch["targets"][0]["boxes_xyxy"], gt)
    assert ious.shape == (2,) and ((ious >= 0) & (ious <= 1)).all()
    # jitter keeps boxes valid and inside the input
    boxes = torch.tensor([[10.0, 10, 50, 40], [0, 0, 3, 3]])
    out = jitter_boxes(boxes, 0.5, 512, torch.Generator().manual_seed(0))
    assert (out[:, 2] > out[:, 0]).all() and (out >= 0).all() and (out <= 512).all()


def test_sam_module_trainable_options():

    model = _tiny_model()
    sam_module(model, trainable=["neck", "prompt_encoder", "mask_decoder"])
    pe = model.sam.prompt_encoder
    assert not any(p.requires_grad for p in pe.mask_downscaling.parameters())  # unused by boxes
    assert pe.point_embeddings[2].weight.requires_grad and pe.no_mask_embed.weight.requires_grad
    assert all(p.requires_grad for p in model.part_parameters("mask_decoder"))
    assert not any(p.requires_grad for p in model.part_parameters("trunk"))
    with pytest.raises(ValueError, match="finder"):
        sam_module(model, trainable=["neck", "finder"])
    with pytest.raises(ValueError, match="empty"):
        sam_module(model, trainable=[])
    # constant lr by default; `lr_drop` adds one step decay after that many epochs
    assert isinstance(sam_module(model).configure_optimizers(), torch.optim.AdamW)
    conf = sam_module(model, lr=1e-3, lr_drop=2, lr_drop_factor=0.5).configure_optimizers()
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4])


def test_sam_module_loss_size():

    weights = {"mask_focal": 20.0, "mask_dice": 1.0, "iou_mse": 1.0}
    model = _tiny_model()
    losses = {}
    for size in (None, 512, 256):
        module = sam_module(model, box_jitter=0.0, loss_weights=weights, loss_size=size)
        logged: dict[str, float] = {}
        module.log = lambda name, value, _out=logged, **kw: _out.__setitem__(name, float(value))
        torch.manual_seed(0)
        module.training_step(_batch(), 0)
        losses[size] = logged
    # loss_size equal to the label size is the default path exactly
    assert losses[512] == losses[None]
    # the toy cells have even edges, so at 256 px each target pixel is fully in or out and
    # the Dice terms differ only by the bilinear upsampling of the logits (a few percent)
    for name in ("train/mask_dice", "train/mask_focal"):
        assert losses[256][name] == pytest.approx(losses[None][name], rel=0.1)
    assert losses[256]["train/mask_dice"] != losses[None]["train/mask_dice"]
    # focal weight 0: the term is skipped (logged as 0) and the total is Dice + IoU MSE
    module = sam_module(model, box_jitter=0.0, loss_size=256,
                       loss_weights={"mask_focal": 0.0, "mask_dice": 1.0, "iou_mse": 1.0})
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    torch.manual_seed(0)
    total = module.training_step(_batch(), 0)
    assert logged["train/mask_focal"] == 0.0
    assert float(total) == pytest.approx(logged["train/mask_dice"] + logged["train/iou_mse"],
                                         rel=1e-6)
