"""data_prep.pairs on a folder with good and bad pairs: every bad pair is reported in one
pass, naming both files, and nothing is written; --skip-bad converts the rest and lists
the skipped pairs in the manifest."""

from __future__ import annotations

import json

import numpy as np
import tifffile

from data_prep import pairs


def _folder(tmp_path):
    src = tmp_path / "mine"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        image = (rng.random((64, 64)) * 255).astype(np.uint8)
        label = np.zeros((64, 64), np.uint16)
        label[10:30, 10:30], label[40:60, 35:55] = 1, 2
        tifffile.imwrite(src / "images" / f"ok{i}.tif", image)
        tifffile.imwrite(src / "labels" / f"ok{i}.tif", label)
    tifffile.imwrite(src / "images" / "shape.tif", np.zeros((64, 64), np.uint8))
    tifffile.imwrite(src / "labels" / "shape.tif", np.zeros((32, 48), np.uint16))
    tifffile.imwrite(src / "images" / "frac.tif", np.zeros((64, 64), np.uint8))
    tifffile.imwrite(src / "labels" / "frac.tif", np.full((64, 64), 0.5, np.float32))
    tifffile.imwrite(src / "images" / "empty.tif", np.zeros((64, 64), np.uint8))
    (src / "labels" / "empty.tif").write_bytes(b"")
    return src


def test_every_bad_pair_in_one_report_and_nothing_written(tmp_path, capsys):
    src, out = _folder(tmp_path), tmp_path / "out"
    assert pairs.main(["--src", str(src), "--out", str(out), "--channels", "nuclear=0",
                       "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "3 bad image/label pair(s)" in err and "--skip-bad" in err
    assert "shape.tif: label shape (32, 48) does not match image shape (64, 64)" in err
    assert "frac.tif: label image has non-integer values" in err
    assert "empty.tif: empty file (0 bytes)" in err
    assert not (out / "mine").exists()


def test_skip_bad_converts_the_rest_and_records_them(tmp_path):
    src, out = _folder(tmp_path), tmp_path / "out"
    assert pairs.main(["--src", str(src), "--out", str(out), "--channels", "nuclear=0",
                       "--quiet", "--skip-bad"]) == 0
    manifest = json.loads((out / "mine" / "manifest.json").read_text())
    skipped = manifest["settings"]["skipped"]
    assert sorted(s["image"].rsplit("/", 1)[-1] for s in skipped) == [
        "empty.tif", "frac.tif", "shape.tif"]
    assert all(s["reason"] for s in skipped)
    total = sum(info["n_images"] for info in manifest["splits"].values())
    assert total == 4
