"""Scoring a folder of predicted label images (`eval.py pred_dir=...`) end to end on real DSB
2018 labels from ../shared/data: predictions are copies of the truth with known changes
(objects dropped), so every metric's value is known by counting; then each bad input
must be refused, naming the file, with nothing written."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from omegaconf import OmegaConf

from cellsam.tasks.score_folder import FolderScoringError, score_folder

ROOT = Path(__file__).resolve().parents[2]
N = 4  # images (the first 256 x 256 ones, sorted by name)


@pytest.fixture(scope="module")
def real(shared_data, tmp_path_factory) -> dict:
    """gt/ (uint16 TIFFs) and three prediction folders: the truth as PNG, as float32 .npy
    with scrambled ids, and with every other object (in id order) dropped."""
    meta = json.loads((shared_data / "dsb2018_fixed" / "meta.json").read_text())
    ids = sorted(m["id"] for m in meta if (m["h"], m["w"]) == (256, 256))[:N]
    root = tmp_path_factory.mktemp("score_folder")
    folders = {k: root / k for k in ("gt", "same", "scrambled", "dropped")}
    for f in folders.values():
        f.mkdir()
    expect = []
    rng = np.random.default_rng(0)
    for name in ids:
        lab = tifffile.imread(shared_data / "dsb2018_fixed" / "labels" / f"{name}.tif")
        tifffile.imwrite(folders["gt"] / f"{name}.tif", lab)
        import imageio.v3 as iio

        iio.imwrite(folders["same"] / f"{name}.png", lab.astype(np.uint16))
        objs = np.unique(lab[lab > 0])
        new_ids = rng.permutation(10 * objs.size)[: objs.size] + 7
        lut = np.zeros(int(lab.max()) + 1, np.int64)
        lut[objs] = new_ids
        np.save(folders["scrambled"] / f"{name}.npy", lut[lab].astype(np.float32))
        keep = objs[::2]
        np.save(folders["dropped"] / f"{name}.npy", np.where(np.isin(lab, keep), lab, 0))
        areas = np.bincount(lab.ravel())[objs]
        expect.append({"name": name, "n": objs.size, "k": keep.size,
                       "aji": areas[::2].sum() / areas.sum()})
    return {"root": root, **folders, "expect": expect}


def test_exact_copies_score_one_everywhere(real, tmp_path):
    for pred in ("same", "scrambled"):  # PNG; float .npy with integer values, other ids
        out = score_folder(real[pred], tmp_path / pred, gt_dir=real["gt"], bootstrap={"n": 200})
        s = out["gt"]
        assert s["n_images"] == N and s["n_cells"] == sum(e["n"] for e in real["expect"])
        for key in ("f1_50_mean", "deepcell_f1_60", "coco_map", "cellpose_ap_90", "aji",
                    "pq_50", "msa", "sa75"):
            assert s[key] == pytest.approx(1.0), (pred, key)
        assert s["ci"]["f1_50_mean"] == [1.0, 1.0]


def test_dropped_objects_give_the_counted_metrics(real, tmp_path):
    """Half the objects kept exactly, none added: per image with n true and k kept,
    TP = k at every IoU, so F1 = 2k / (n + k), Cellpose AP = SA = k / n at every threshold,
    PQ = DQ = F1 (SQ = 1), DeepCell F1 = F1, AJI = kept area / true area."""
    out = score_folder(real["dropped"], tmp_path, gt_dir=real["gt"], gt_name="dsb",
                       bootstrap={"n": 300, "seed": 1})
    ex = real["expect"]
    f1 = [2 * e["k"] / (e["n"] + e["k"]) for e in ex]
    ap = [e["k"] / e["n"] for e in ex]
    s = out["dsb"]
    assert s["f1_50_mean"] == pytest.approx(np.mean(f1), abs=1e-12)
    n, k = sum(e["n"] for e in ex), sum(e["k"] for e in ex)
    assert s["f1_50_pooled"] == pytest.approx(2 * k / (n + k), abs=1e-12)
    assert s["deepcell_f1_60"] == pytest.approx(2 * k / (n + k), abs=1e-12)
    for key in ("cellpose_ap_50", "cellpose_ap_75", "cellpose_ap_90", "msa", "sa50", "sa75"):
        assert s[key] == pytest.approx(np.mean(ap), abs=1e-12), key
    assert s["pq_50"] == pytest.approx(np.mean(f1), abs=1e-12) and s["sq_50"] == 1.0
    assert s["aji"] == pytest.approx(np.mean([e["aji"] for e in ex]), abs=1e-12)
    assert s["iou_curve"]["f1_mean"] == pytest.approx([np.mean(f1)] * 10, abs=1e-12)
    lo, hi = s["ci"]["f1_50_mean"]
    assert min(f1) <= lo <= s["f1_50_mean"] <= hi <= max(f1)
    # the files: the same set as a checkpoint's evaluation, per-image rows by name
    names = {p.name for p in tmp_path.iterdir()}
    assert {"results.json", "results.csv", "results.md", "results.png",
            "results_per_image.csv", "results_iou.png"} <= names
    rows = list(csv.DictReader((tmp_path / "results_per_image.csv").open()))
    assert [r["name"] for r in rows] == [e["name"] for e in ex]
    assert [float(r["f1_50"]) for r in rows] == pytest.approx(f1, abs=1e-12)
    assert [float(r["cellpose_ap_75"]) for r in rows] == pytest.approx(ap, abs=1e-12)
    assert [int(r["tp_50"]) for r in rows] == [e["k"] for e in ex]
    md = (tmp_path / "results.md").read_text()
    assert "predictions=" in md and "AP@0.75 (Cellpose)" in md and "mSA (micro-sam)" in md
    assert f"{s['f1_50_mean']:.3f} [{lo:.3f}, {hi:.3f}]" in md
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["mode"] == "folder" and data["meta"]["bootstrap"]["n"] == 300


def test_eval_py_scores_a_folder(real, tmp_path):
    cmd = [sys.executable, str(ROOT / "eval.py"), f"pred_dir={real['dropped']}",
           f"gt_dir={real['gt']}", "coco=false", "bootstrap.n=100", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    ex = real["expect"]
    assert data["gt"]["f1_50_mean"] == pytest.approx(
        np.mean([2 * e["k"] / (e["n"] + e["k"]) for e in ex]), abs=1e-12)
    assert data["gt"]["coco_map"] is None  # coco=false
    assert "| gt | 4 |" in proc.stdout


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_each_bad_input_is_named_and_nothing_is_written(real, tmp_path):
    first = real["expect"][0]["name"]
    out = tmp_path / "out"

    def refused(pred: Path, pattern: str) -> None:
        with pytest.raises(FolderScoringError, match=pattern):
            score_folder(pred, out, gt_dir=real["gt"], coco=False)
        assert not out.exists()

    missing = _copy(real["same"], tmp_path / "missing")
    (missing / f"{first}.png").unlink()
    refused(missing, rf"1 ground-truth image\(s\) have no prediction .*{first}")
    extra = _copy(real["same"], tmp_path / "extra")
    (extra / "stray.png").write_bytes((extra / f"{first}.png").read_bytes())
    refused(extra, r"1 prediction\(s\) match no ground-truth name: .*stray\.png")
    twice = _copy(real["same"], tmp_path / "twice")
    np.save(twice / f"{first}.npy", np.zeros((256, 256), np.int32))
    refused(twice, rf"several files.*{first}\.npy and .*{first}\.png")

    cases = {
        "shape": (np.zeros((128, 256), np.int32), r"shape \(128, 256\) differs from the "
                                                  r"ground truth's \(256, 256\)"),
        "float": (np.full((256, 256), 0.5, np.float32), "non-integer values"),
        "negative": (np.full((256, 256), -1, np.int32), "negative values"),
        "rgb": (np.zeros((256, 256, 3), np.uint8), r"must be 2-D \[H, W\], got shape"),
    }
    for what, (arr, pattern) in cases.items():
        bad = _copy(real["same"], tmp_path / what)
        (bad / f"{first}.png").unlink()
        np.save(bad / f"{first}.npy", arr)
        refused(bad, rf"1 problem\(s\) in 4 image pairs.*\n  - .*{what}/{first}\.npy: "
                     rf".*{pattern}")
    garbage = _copy(real["same"], tmp_path / "garbage")
    (garbage / f"{first}.png").unlink()
    (garbage / f"{first}.tif").write_bytes(b"not a tiff at all")
    refused(garbage, rf"garbage/{first}\.tif: not a readable TIF file")
    # several problems: every one listed, not only the first
    many = _copy(real["same"], tmp_path / "many")
    names = [e["name"] for e in real["expect"]]
    for name in names[:3]:
        (many / f"{name}.png").unlink()
        np.save(many / f"{name}.npy", np.full((256, 256), -2, np.int16))
    with pytest.raises(FolderScoringError, match=r"3 problem\(s\)") as err:
        score_folder(many, out, gt_dir=real["gt"], coco=False)
    assert all(f"{n}.npy" in str(err.value) for n in names[:3]) and not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(empty, "no label images")


def _dataset(folder: Path, labels: dict[str, np.ndarray]) -> Path:
    """A dataset in the project format, test split only, from 256 px labels padded to 512."""
    from cellsam.data.format import SplitWriter, write_manifest

    image = np.zeros((3, 512, 512), np.float32)
    image[2] = 0.5
    with SplitWriter(folder, "test") as w:
        for name, lab in labels.items():
            w.add(image, np.pad(lab, ((0, 256), (0, 256))).astype(np.int32), f"test/{name}")
    write_manifest(folder, name=folder.name, source="dsb2018_fixed", licence="CC0",
                   converter="test", converter_version="0", splits={"test": w.summary})
    return folder


def test_predictions_against_dataset_splits(real, tmp_path):
    gt = {e["name"]: tifffile.imread(real["gt"] / f"{e['name']}.tif") for e in real["expect"]}
    one = _dataset(tmp_path / "one", gt)
    two = _dataset(tmp_path / "two", dict(list(gt.items())[:2]))
    pred = tmp_path / "pred"
    for name, lab in gt.items():  # one dataset: pred_dir/<name as in coco.json>.tif
        (pred / "test").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(pred / "test" / f"{name}.tif", np.pad(lab, ((0, 256), (0, 256))))
    data = {"datasets": {"one": {"path": str(one)}}}
    out = score_folder(pred, tmp_path / "o1", data_cfg=data, split="test", coco=False)
    assert out["one"]["n_images"] == N and out["one"]["f1_50_mean"] == 1.0
    assert out["meta"]["split"] == "test"
    # two datasets: a subfolder each, so the flat folder matches neither (both directions)
    both = {"datasets": {"one": {"path": str(one)}, "two": {"path": str(two)}}}
    with pytest.raises(FolderScoringError, match=r"6 ground-truth image\(s\) have no "
                       r"prediction.*one/test/.*two/test/.*\n  - 4 prediction\(s\) match no "
                       r"dataset subfolder: .*pred/test/.*\(datasets: one, two\)"):
        score_folder(pred, tmp_path / "o2", data_cfg=both, split="test", coco=False)
    nested = tmp_path / "nested"
    _copy(pred / "test", nested / "one" / "test")
    _copy(pred / "test", nested / "two" / "test")
    for name in list(gt)[2:]:
        (nested / "two" / "test" / f"{name}.tif").unlink()
    out = score_folder(nested, tmp_path / "o3", data_cfg=both, split="test", coco=False)
    assert (out["one"]["n_images"], out["two"]["n_images"], out["all"]["n_images"]) == (4, 2, 6)
    with pytest.raises(ValueError, match=r"split='val' is missing from 2 of 2"):
        score_folder(nested, tmp_path / "o4", data_cfg=both, split="val", coco=False)


def test_eval_config_refuses_ambiguous_modes(tmp_path):
    from cellsam.tasks.evaluate import evaluate

    base = {"paths": {"output_dir": str(tmp_path / "o")}, "data": {}, "ckpt": "???"}
    for extra, pattern in (({"pred_dir": "p", "ckpt": "x.ckpt"}, "not both"),
                           ({"gt_dir": "g"}, "give pred_dir too"),
                           ({}, "ckpt=<checkpoint> is required"),
                           ({"pred_dir": "p", "max_images": 3}, "max_images does not apply")):
        with pytest.raises(ValueError, match=pattern):
            evaluate(OmegaConf.create({**base, **extra}))
    assert not (tmp_path / "o").exists()
