"""The SAC stage through the real configs (Hydra compose + `train()`), then its checkpoint
through `load_model`, `SACPredictor`, `predict.py` and `eval.py`, on CPU.

The tiny SAC's base SAM weights are a file written here (a random tiny SAM), so the
checkpoint stores only LoRA, the trained SAM parts and the prompter, and names the base by
sha256. The stage trains on one fixed batch (`overfit_batches`) for 40 steps: the test shows
that the losses fall on that batch within a CPU-test budget, not that masks become good:
as test_stage2.py explains, a random tiny decoder first learns all-background masks under
SAM's focal loss (the mask IoU of ground-truth points stays 0 here, and with the Dice loss
alone it stayed 0 over 80 steps too), nor generalisation.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_train import compose_in_process

STEPS = 40
NO_AUGMENT = ["data.augment.hflip=0", "data.augment.vflip=0", "data.augment.rot90=false",
              "data.augment.zoom_p=0", "data.augment.gamma_p=0", "data.augment.noise_p=0",
              "data.augment.blur_p=0"]


def write_base(path: Path, seed: int) -> Path:
    """A random tiny SAM (128 px input) saved in SAM's own layout: a base checkpoint."""
    from cellsam.models.sam import build_sam

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sam = build_sam("tiny", None, image_size=128)
    torch.save(sam.state_dict(), path)
    return path


def sac_overrides(data_dir: Path, base: Path | None, epochs: int, steps: int | None = None,
                  max_cells: int = 8) -> list[str]:
    """The tiny SAC (128 px input) on the synthetic set; `steps` batches per epoch (None:
    one fixed batch, `overfit_batches`)."""
    batches = ([f"+trainer.limit_train_batches={steps}"] if steps
               else ["+trainer.overfit_batches=1"])
    return [
        "stage=sac", "model=sac_tiny", "trainer=cpu", "logger=csv", "data=synthetic",
        f"data.datasets.synthetic.path={data_dir}", "~data.datasets.synthetic.generate",
        "data.num_workers=0", "data.batch_size=2", "+model.sam.image_size=128",
        f"model.sam.checkpoint={base or 'null'}", "model.lora.rank=2",
        "model.prompter.base_channels=4", "model.prompter.depth=2",
        "stage.module.loss_size=128", f"stage.module.max_cells_per_image={max_cells}",
        f"trainer.max_epochs={epochs}", *batches, "+trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1", "+trainer.enable_progress_bar=false",
        "++callbacks.segmentation_metrics.inference.max_detections=8",
        "callbacks.segmentation_metrics.coco=false", *NO_AUGMENT,
    ]


def logged_series(run_dir: Path, key: str) -> list[float]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


@pytest.fixture(scope="module")
def trained(synthetic_dir, tmp_path_factory) -> dict:
    from cellsam.tasks.train import train

    root = tmp_path_factory.mktemp("sac")
    base = write_base(root / "base.pth", seed=0)
    threads = torch.get_num_threads()
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        torch.set_num_threads(1)  # see test_stage2.py: oversubscribed OpenMP threads spin
    try:
        result = train(compose_in_process([
            *sac_overrides(synthetic_dir, base, epochs=STEPS, max_cells=32),
            "stage.module.lr=3e-3", "stage.module.trainable=[lora,prompt_encoder,mask_decoder]",
            f"trainer.check_val_every_n_epoch={STEPS // 2}",
        ], root / "run"))
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "base": base, "run": root / "run", "result": result,
            "last": root / "run" / "checkpoints" / "last.ckpt", "data": synthetic_dir}


@pytest.fixture(scope="module")
def short_run(trained) -> Path:
    """Two steps from the same base: masks not yet collapsed to background (the 40-step run's
    are), so the pipeline has cells to compose."""
    from cellsam.tasks.train import train

    out = trained["root"] / "short"
    train(compose_in_process(sac_overrides(trained["data"], trained["base"], epochs=1, steps=2),
                             out))
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_sac_training_losses_fall(trained):
    run = trained["run"]
    out = {}
    for key in ("train/loss", "train/mask_focal", "train/mask_dice", "train/fg_bce",
                "train/fg_dice", "train/centre"):
        series = logged_series(run, key)
        assert len(series) == STEPS, key
        out[key] = (np.mean(series[:3]), np.mean(series[-3:]))
    fg_dice = logged_series(run, "val/all/fg_dice")
    print(f"\nSAC tiny, {STEPS} steps on one batch (mean of the first 3 -> last 3 steps): "
          + ", ".join(f"{k} {a:.3f} -> {b:.3f}" for k, (a, b) in out.items())
          + f"; val/all/fg_dice {fg_dice}")
    # Measured (40 steps, SAM's 20:1:1 mask loss): loss 5.09 -> 2.81, focal 0.098 -> 0.003,
    # foreground BCE 0.69 -> 0.47, Dice flat at 0.989 (the random tiny decoder first learns
    # all-background masks, see the module doc).
    assert out["train/loss"][1] < 0.7 * out["train/loss"][0]
    assert out["train/mask_focal"][1] < 0.1 * out["train/mask_focal"][0]
    assert out["train/fg_bce"][1] < 0.8 * out["train/fg_bce"][0]
    assert out["train/fg_dice"][1] < out["train/fg_dice"][0]
    assert len(fg_dice) == 2 and fg_dice[1] > fg_dice[0]
    assert "val/all/f1_50_mean" in trained["result"]["metrics"]  # the pipeline callback ran


@pytest.mark.slow
def test_sac_checkpoint_is_small_and_refuses_another_base(trained, tmp_path):
    from cellsam.models.lora import file_sha256
    from cellsam.models.sac import key_part
    from cellsam.utils.checkpoint import CheckpointError, load_model

    ckpt = torch.load(trained["last"], map_location="cpu", weights_only=True)
    meta = ckpt["cellsam"]
    assert meta["stage"] == "sac" and meta["input_size"] == 128
    assert meta["sac"]["base"]["sha256"] == file_sha256(trained["base"])
    parts = {key_part(k[len("model."):]) for k in ckpt["state_dict"]}
    assert parts == {"lora", "prompt_encoder", "mask_decoder", "prompter"}
    stored = sum(v.numel() for v in ckpt["state_dict"].values())
    model, _ = load_model(trained["last"])
    total = sum(v.numel() for v in model.state_dict().values())
    from_base = sum(v.numel() for k, v in model.state_dict().items() if key_part(k) not in parts)
    print(f"\nSAC checkpoint holds {stored} of the model's {total} values ({from_base} from "
          f"the base: trunk and neck); file {trained['last'].stat().st_size} bytes")
    assert stored + from_base == total
    # the loaded model has the trained tensors and the base's frozen weights
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(model.state_dict()[k[len("model."):]], v), k
    base = torch.load(trained["base"], weights_only=True)
    for k, v in base.items():
        if key_part("sam." + k) not in parts:
            assert torch.equal(model.sam.state_dict()[k], v), k
    other = write_base(tmp_path / "other.pth", seed=1)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_model(trained["last"], base_checkpoint=other)
    with pytest.raises(CheckpointError, match="base_checkpoint"):
        load_model(trained["last"], base_checkpoint=tmp_path / "moved.pth")


@pytest.mark.slow
def test_sac_predictor_predict_and_eval(trained, short_run, tmp_path):
    import tifffile
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cellsam.data.format import open_split
    from cellsam.inference.sac_predictor import SACPredictor, predictor_from_checkpoint
    from cellsam.tasks.evaluate import run_evaluation
    from cellsam.tasks.predict import predict

    last = short_run
    open_settings = {"iou_threshold": -1.0, "max_detections": 8, "min_area": 4}
    predictor = predictor_from_checkpoint(last, device="cpu", **open_settings)
    assert isinstance(predictor, SACPredictor)
    unmerged = SACPredictor.from_checkpoint(last, device="cpu", merge=False, **open_settings)
    assert predictor.model.has_lora is False and unmerged.model.has_lora
    image = np.asarray(open_split(trained["data"], "train").images[0])
    merged_result, plain_result = predictor.predict(image), unmerged.predict(image)
    print(f"\nSAC after 2 steps: {merged_result.num_cells} cells")
    assert merged_result.num_cells > 0 and merged_result.labels.shape == image.shape[-2:]
    # merged LoRA: the same cells (logits equal within float rounding)
    assert np.mean(merged_result.labels == plain_result.labels) > 0.999
    # the labelling loop opens the same checkpoint and proposes the predictor's cells
    from cellsam.labelling import LabellingSession

    session = LabellingSession.from_checkpoint(last, image, device="cpu", **open_settings)
    assert session.has_detector
    np.testing.assert_array_equal(session.segment_all().labels, merged_result.labels)
    # tiling goes through the same segment_inputs
    tiled = predictor.configure(tile_size=256, tile_overlap=0.25).predict(image, tiling=True)
    assert tiled.labels.shape == image.shape[-2:]

    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", image[0])
    GlobalHydra.instance().clear()
    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("predict", overrides=[
            f"ckpt={last}", f"input={folder}", f"output={tmp_path / 'out'}", "device=cpu",
            *[f"inference.{k}={v}" for k, v in open_settings.items()]])
    assert predict(cfg) == 0
    labels = tifffile.imread(tmp_path / "out" / "a.tif")
    with open(tmp_path / "out" / "a.csv") as fh:
        assert len(list(csv.DictReader(fh))) == labels.max()
    assert labels.shape == image.shape[-2:]

    cfg = compose_in_process(sac_overrides(trained["data"], trained["base"], 1), tmp_path)
    results = run_evaluation(last, cfg.data, open_settings, tmp_path / "eval", split="test",
                             device="cpu", batch_size=2, coco=False, max_images=2,
                             bootstrap={"n": 0})
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["meta"]["stage"] == saved["meta"]["stage"] == "sac"
    assert 0.0 <= saved["all"]["f1_50_mean"] <= 1.0


@pytest.mark.slow
def test_sac_lite_checkpoint_names_the_packaged_base(synthetic_dir, tmp_path):
    """One step of `model=sac_lite` (LiteMedSAM's packaged weights): the checkpoint names the
    package's file by the sha256 it is checked against and stores no encoder base weight."""
    from cellsam.models.checkpoints import PACKAGED
    from cellsam.models.sac import key_part
    from cellsam.tasks.train import train
    from cellsam.utils.checkpoint import load_model

    keep = ("+model.sam.image_size", "model.sam.checkpoint", "model.lora.rank",
            "model.prompter", "stage.module.loss_size")
    overrides = [o.replace("model=sac_tiny", "model=sac_lite")
                 for o in sac_overrides(synthetic_dir, None, epochs=1, steps=1)
                 if not o.startswith(keep)]
    train(compose_in_process([*overrides, "callbacks.segmentation_metrics=null",
                              "stage.module.max_cells_per_image=2"], tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    base = ckpt["cellsam"]["sac"]["base"]
    assert base == {"source": "packaged:lite_medsam", "file": "lite_medsam.pth",
                    "sha256": PACKAGED["lite_medsam"].sha256}
    assert {key_part(k[len("model."):]) for k in ckpt["state_dict"]} == {
        "lora", "mask_decoder", "prompter"}
    model, _ = load_model(last)
    stored = sum(v.numel() for v in ckpt["state_dict"].values())
    total = sum(v.numel() for v in model.state_dict().values())
    lora = sum(p.numel() for p in model.part_parameters("lora"))
    print(f"\nsac_lite checkpoint: {stored} of {total} model values stored ({lora} LoRA), "
          f"file {last.stat().st_size} bytes with the optimiser state")
    assert stored < 0.5 * total


@pytest.mark.slow
def test_prompt_grid_choose_on_val_report_on_test(trained, short_run, tmp_path):
    """experiments/sac_prompt_grid.py on a checkpoint: the validation grid scores what
    `eval.py` scores for the same settings, the test split only takes the validation choice
    and its one-factor changes."""
    import importlib.util

    from conftest import ROOT

    from cellsam.tasks.evaluate import run_evaluation

    spec = importlib.util.spec_from_file_location(
        "sac_prompt_grid", ROOT / "experiments" / "sac_prompt_grid.py")
    grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid)
    common = ["--ckpt", str(short_run), "--data", str(trained["data"]), "--max-images", "2"]
    val = grid.main([*common, "--split", "val", "--out", str(tmp_path / "val.json"),
                     "--grid", "prompt_negatives=none,both", "iou_threshold=-1.0,0.0"])
    assert len(val["rows"]) == 4 and val["chosen"] in [
        {k: r[k] for k in ("prompt_negatives", "iou_threshold")} for r in val["rows"]]
    one = grid.main([*common, "--split", "val", "--one-factor",
                     "--grid", "prompt_negatives=none,both", "iou_threshold=-1.0,0.0"])
    base = {"prompt_negatives": "both", "iou_threshold": 0.4}  # the checkpoint's settings
    assert [{k: r[k] for k in base} for r in one["rows"]] == grid.ablation_rows(
        base, one["grid"])
    assert one["chosen"] == grid.choose_per_key(base, one["rows"], one["grid"])
    with pytest.raises(SystemExit, match="from-val"):
        grid.main([*common, "--split", "test", "--grid", "prompt_negatives=none"])
    test = grid.main([*common, "--split", "test", "--from-val", str(tmp_path / "val.json")])
    assert [{k: r[k] for k in val["chosen"]} for r in test["rows"]] == grid.ablation_rows(
        val["chosen"], val["grid"])
    assert all(0.0 <= r["coco_map"] <= 1.0 for r in test["rows"])

    row = val["rows"][1]  # negatives none, iou 0.0: what eval.py scores with those settings
    settings = {"prompt_negatives": "none", "iou_threshold": 0.0}
    cfg = compose_in_process(sac_overrides(trained["data"], trained["base"], 1), tmp_path)
    results = run_evaluation(short_run, cfg.data, settings, tmp_path / "eval", split="val",
                             device="cpu", batch_size=2, coco=False, max_images=2,
                             bootstrap={"n": 0})
    assert (row["prompt_negatives"], row["iou_threshold"]) == ("none", 0.0)
    for key in ("f1_50_mean", "deepcell_f1_60", "dice", "n_pred_cells"):
        assert row[key] == pytest.approx(results["all"][key], abs=1e-12), key
