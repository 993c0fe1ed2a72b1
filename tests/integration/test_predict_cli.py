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
from fake_checkpoints import write_checkpoint
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from cellsam.tasks.predict import collect_inputs, predict

ROOT = Path(__file__).resolve().parents[2]
OPEN = ["inference.box_threshold=0.0", "inference.iou_threshold=0.0",
        "inference.max_detections=8", "inference.min_area=4"]


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


def test_inputs_and_results_are_never_overwritten(inputs, tmp_path):
    """Outputs into the input folder that would replace an input, and two inputs with one
    stem: refused before anything is written, naming the files."""
    _, ckpt = inputs
    folder = tmp_path / "same"
    folder.mkdir()
    raw = np.full((40, 40), 7, np.uint16)
    tifffile.imwrite(folder / "same.tif", raw)
    iio.imwrite(folder / "same.png", np.zeros((40, 40), np.uint8))
    iio.imwrite(folder / "other.png", np.zeros((40, 40), np.uint8))
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(ValueError, match=r"same name .*same\.png.*same\.tif"):
        run_predict([f"ckpt={ckpt}", f"input={folder}", f"output={folder}", "device=cpu"])
    (folder / "same.png").unlink()
    with pytest.raises(ValueError, match=r"overwrite input files .*same\.tif"):
        run_predict([f"ckpt={ckpt}", f"input={folder}", f"output={folder}", "device=cpu"])
    assert np.array_equal(tifffile.imread(folder / "same.tif"), raw)
    assert sorted(p.name for p in folder.iterdir()) == sorted(set(before) - {"same.png"})


def test_interrupted_and_failed_writes(inputs, tmp_path, monkeypatch, caplog):
    """A write that fails midway leaves no file under the final name (an earlier result
    stays as it was), and a failing input does not stop the others."""
    import cellsam.tasks.predict as predict_task

    folder, ckpt = inputs
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.tif", "b.png"):
        (src / name).write_bytes((folder / name).read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_overlay.png").write_bytes(b"previous result")
    real = predict_task.overlay_image

    def failing_overlay(prepared, labels):
        if prepared.shape[-2:] == (200, 240):  # a.tif's overlay: fails while writing
            raise OSError("disk full")
        return real(prepared, labels)

    monkeypatch.setattr(predict_task, "overlay_image", failing_overlay)
    failed = run_predict([f"ckpt={ckpt}", f"input={src}", f"output={out}", "device=cpu",
                          "overlay=true", *OPEN])
    assert failed == 1
    assert "a.tif: OSError: disk full" in caplog.text and "1 of 2 file(s) failed" in caplog.text
    assert (out / "a_overlay.png").read_bytes() == b"previous result"
    assert (out / "b.tif").is_file() and (out / "b_overlay.png").is_file()
    assert not [p for p in out.iterdir() if ".tmp" in p.name or p.name.startswith(".")]


def test_blank_images_are_named_and_channel_axis_is_settable(inputs, tmp_path, caplog):
    _, ckpt = inputs
    src = tmp_path / "blank"
    src.mkdir()
    tifffile.imwrite(src / "zero1.tif", np.zeros((32, 32), np.uint16))
    tifffile.imwrite(src / "zero2.tif", np.zeros((32, 32), np.uint16))
    # first and last axes both 2 long: only channel_axis can tell which holds the channels
    tifffile.imwrite(src / "mid.tif", np.random.default_rng(0).random((2, 40, 2)).astype(
        np.float32))
    failed = run_predict([f"ckpt={ckpt}", f"input={src}", f"output={tmp_path / 'o'}",
                          "device=cpu", "channel_axis=-1", *OPEN])
    assert failed == 0
    for name in ("zero1.tif", "zero2.tif"):
        assert any(name in r.message and "empty labels" in r.message for r in caplog.records)
    assert tifffile.imread(tmp_path / "o" / "mid.tif").shape == (2, 40)
