"""`eval.py` and `train.py ... evaluate_after=true` on a tiny two-stage checkpoint.

Stage 1 and stage 2 each train two steps of the tiny model on 4 synthetic images (through
Hydra compose on the real configs); stage 2 also runs the segmentation-metrics callback in
a real Trainer and evaluates its best checkpoint afterwards. Then `python eval.py` runs as
a user would. Both must write results.json / .csv / .md / .png in the results.json schema.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_train import ROOT, compose_in_process, tiny_overrides

from cellsam.metrics.report import SCHEMA_KEYS

FILES = {"results.json", "results.csv", "results.md", "results.png"}
# "++": adds the callback, or keeps it where conf/stage/sam.yaml already lists it.
CALLBACK = ["++callbacks.segmentation_metrics._target_="
            "cellsam.callbacks.segmentation_metrics.SegmentationMetrics"]


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory) -> dict:
    from cellsam.data.synthetic import generate_dataset
    from cellsam.tasks.train import train

    root = tmp_path_factory.mktemp("eval_cli")
    data = root / "synthetic"
    generate_dataset(data, {"train": 4, "val": 2, "test": 5}, cells=(4, 14), seed=3,
                     progress=False)
    overrides = tiny_overrides(data, steps=2, epochs=1)
    stage1 = train(compose_in_process(overrides, root / "stage1"))
    stage2 = train(compose_in_process(
        [*overrides, "stage=sam", f"finder_ckpt={stage1['best_path']}", "evaluate_after=true",
         *CALLBACK], root / "stage2"))
    return {"root": root, "data": data, "stage2": stage2}


def check_results(folder: Path, datasets: list[str]) -> dict:
    assert FILES <= {p.name for p in folder.iterdir()}
    results = json.loads((folder / "results.json").read_text())
    for name in [*datasets, "all"]:
        missing = set(SCHEMA_KEYS) - set(results[name])
        assert not missing, f"{name}: missing {missing}"
    assert results["all"]["n_images"] == 5 and results["all"]["n_cells"] > 0
    assert results["meta"]["split"] == "test"
    header = (folder / "results.csv").read_text().splitlines()[0].split(",")
    assert set(SCHEMA_KEYS) <= set(header)
    assert "F1@0.5 (CellSAM), per-image mean" in (folder / "results.md").read_text()
    assert (folder / "results.png").read_bytes()[:4] == b"\x89PNG"
    # per image: one row per test image, named as in the split's coco.json
    rows = list(csv.DictReader((folder / "results_per_image.csv").open()))
    assert len(rows) == 5 and all(r["name"].startswith("test_") for r in rows)
    f1 = [float(r["f1_50"]) for r in rows]
    assert sum(f1) / 5 == pytest.approx(results["all"]["f1_50_mean"], abs=1e-12)
    assert sum(int(r["n_true"]) for r in rows) == results["all"]["n_cells"]
    lo, hi = results["all"]["ci"]["f1_50_mean"]
    assert lo <= results["all"]["f1_50_mean"] <= hi
    assert len(results["all"]["iou_curve"]["cellpose_ap"]) == 10
    assert (folder / "results_iou.png").read_bytes()[:4] == b"\x89PNG"
    return results


def test_train_evaluate_after_writes_results(two_stage):
    check_results(two_stage["root"] / "stage2", ["synthetic"])
    metrics = two_stage["stage2"]["metrics"]  # the callback's keys in a real Trainer
    for key in ("val/synthetic/f1_50_mean", "val/all/deepcell_f1_60", "val/all/coco_map"):
        assert key in metrics


def test_eval_cli_writes_all_files(two_stage, tmp_path):
    ckpt = two_stage["stage2"]["best_path"]
    cmd = [sys.executable, str(ROOT / "eval.py"), f"ckpt={ckpt}", "data=synthetic",
           f"data.datasets.synthetic.path={two_stage['data']}",
           "~data.datasets.synthetic.generate", "data.num_workers=0", "split=test",
           "device=cpu", f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = check_results(tmp_path, ["synthetic"])
    assert results["meta"]["stage"] == "sam" and results["meta"]["device"] == "cpu"
    assert "| synthetic | 5 |" in proc.stdout  # the Markdown table is printed
    assert "eval test" in proc.stderr  # tqdm progress over images


def test_a_dataset_without_the_split_is_refused_or_listed(two_stage, tmp_path):
    """Two datasets, one without `test`: refused by default (naming it and its splits);
    with skip_missing_split the other is scored and the missing one is listed."""
    from omegaconf import OmegaConf

    from cellsam.data.synthetic import generate_dataset
    from cellsam.tasks.evaluate import run_evaluation

    no_test = tmp_path / "no_test"
    generate_dataset(no_test, {"train": 2, "val": 1}, cells=(4, 8), seed=4, progress=False)
    data_cfg = OmegaConf.create({
        "_target_": "cellsam.data.datamodule.CellDataModule", "num_workers": 0,
        "datasets": {"synthetic": {"path": str(two_stage["data"])},
                     "no_test": {"path": str(no_test)}}})
    ckpt = two_stage["stage2"]["best_path"]
    with pytest.raises(ValueError, match=r"missing from 1 of 2 .*no_test .* has \['train', "
                                         r"'val'\].*skip_missing_split=true"):
        run_evaluation(ckpt, data_cfg, {}, tmp_path / "refused", device="cpu", coco=False)
    assert not (tmp_path / "refused").exists()
    out = run_evaluation(ckpt, data_cfg, {}, tmp_path / "skipped", device="cpu", coco=False,
                         skip_missing_split=True)
    assert out["meta"]["missing_split"] == ["no_test"] and "no_test" not in out
    assert out["all"]["n_images"] == 5
    assert "not scored: no_test" in (tmp_path / "skipped" / "results.md").read_text()
