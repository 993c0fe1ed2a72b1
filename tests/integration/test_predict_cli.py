"""`predict.py`: files, folders and globs in; labels, CSVs and overlays out; bad files skipped."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from cellsam.tasks.predict import collect_inputs, predict

ROOT = Path(__file__).resolve().parents[2]
OPEN = ["inference.box_threshold=0.0", "inference.iou_threshold=0.0",
        "inference.max_detections=8", "inference.min_area=4"]


def write_checkpoint(path: Path) -> Path:
    """A tiny random stage-2 checkpoint laid out as training writes it."""
    import torch

    from cellsam.utils.checkpoint import build_model_from_meta, make_meta

    model_cfg = {"_target_": "cellsam.models.cellsam.build_cellsam", "shared_trunk": True,
                 "sam": {"variant": "tiny", "checkpoint": None},
                 "finder": {"hidden_dim": 32, "ffn_dim": 64, "num_heads": 4,
                            "num_encoder_layers": 1, "num_decoder_layers": 2, "num_queries": 32}}
    torch.manual_seed(0)
    meta = make_meta("sam", {"model": model_cfg}, {}, {})
    model = build_model_from_meta(meta)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "cellsam": meta}, path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    from cellsam.data.synthetic import generate_sample

    folder = tmp_path_factory.mktemp("images")
    img, _ = generate_sample("culture", 10, seed=5, size=512)
    tifffile.imwrite(folder / "a.tif", (img[2, :200, :240] * 4000).astype(np.uint16))
    iio.imwrite(folder / "b.png", (np.moveaxis(img[:, :160, :200], 0, -1) * 255).astype(np.uint8))
    (folder / "broken.tif").write_bytes(b"this is not a tiff")
    tifffile.imwrite(folder / "stack.tif", np.ones((2, 3, 32, 32), np.float32))  # 4-D
    ckpt = write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")
    return folder, ckpt


def run_predict(overrides: list[str]) -> int:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("predict", overrides=overrides)
    return predict(cfg)


def test_folder_in_labels_csv_overlay_out(inputs, tmp_path, caplog):
    folder, ckpt = inputs
    out = tmp_path / "out"
    failed = run_predict([f"ckpt={ckpt}", f"input={folder}", f"output={out}", "overlay=true",
                          "device=cpu", *OPEN])
    assert failed == 2  # broken.tif (unreadable) and stack.tif (4-D)
    assert "broken.tif" in caplog.text and "stack.tif" in caplog.text
    assert "(2, 3, 32, 32)" in caplog.text
    for name, shape in (("a", (200, 240)), ("b", (160, 200))):
        labels = tifffile.imread(out / f"{name}.tif")
        assert labels.shape == shape and labels.dtype == np.uint16
        with open(out / f"{name}.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == labels.max() > 0
        first = rows[0]
        assert int(first["area"]) == int((labels == 1).sum())
        ys, xs = np.nonzero(labels == 1)
        assert float(first["centroid_y"]) == pytest.approx(ys.mean(), abs=0.01)
        assert (int(first["bbox_x0"]), int(first["bbox_y1"])) == (xs.min(), ys.max() + 1)
        assert 0 <= float(first["score"]) <= 1
        overlay = iio.imread(out / f"{name}_overlay.png")
        assert overlay.shape == (*shape, 3)
    assert not (out / "broken.tif").exists() and not (out / "stack.csv").exists()


def test_glob_and_single_file(inputs, tmp_path):
    folder, ckpt = inputs
    assert [p.name for p in collect_inputs(str(folder / "*.png"))] == ["b.png"]
    out = tmp_path / "out"
    assert run_predict([f"ckpt={ckpt}", f"input={folder / 'a.tif'}", f"output={out}",
                        "device=cpu", *OPEN]) == 0
    assert (out / "a.tif").is_file() and not (out / "a_overlay.png").exists()
    with pytest.raises(FileNotFoundError, match="no image files"):
        collect_inputs(str(tmp_path / "nothing*.tif"))


def test_command_line_exit_code(inputs, tmp_path):
    folder, ckpt = inputs
    out = tmp_path / "cli"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "predict.py"), f"ckpt={ckpt}", f"input={folder}",
         f"output={out}", "device=cpu", f"hydra.run.dir={tmp_path / 'run'}", *OPEN],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "broken.tif" in proc.stderr + proc.stdout
    assert "predict" in proc.stderr  # the tqdm progress bar
    assert (out / "a.tif").is_file() and (out / "b.tif").is_file()
