"""The synthetic cell generator: label/image contract, contrast, determinism, datasets, CLI."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from scipy import ndimage

import cellsam.data.synthetic as syn
from cellsam.data.format import open_split, read_manifest
from cellsam.data.synthetic import ARCHETYPES, ensure_synthetic, generate_dataset, generate_sample
from cellsam.data.synthetic_shapes import boundary_map


def _check_label(label: np.ndarray, n: int) -> None:
    """ids exactly 1..n; each object one 4-connected region, >= 2 px high and wide."""
    assert label.dtype == np.int32 and label.shape == (512, 512)
    ids = np.unique(label)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, n + 1))
    for i, sl in enumerate(ndimage.find_objects(label), start=1):
        assert sl[0].stop - sl[0].start > 1 and sl[1].stop - sl[1].start > 1, f"object {i} thin"
        assert ndimage.label(label[sl] == i)[1] == 1, f"object {i} is in pieces"


def _check_image(image: np.ndarray, archetype: str) -> None:
    assert image.dtype == np.float32 and image.shape == (3, 512, 512)
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    assert image[2].max() > 0.5  # blue is never empty (and uses the range)
    assert not image[0].any()  # channel 0 is blank
    if archetype == "tissue":
        assert image[1].max() > 0.5  # nuclear channel
    else:
        assert not image[1].any()


@pytest.mark.parametrize("archetype", ARCHETYPES)
@pytest.mark.parametrize("n", [5, 50, 300])
def test_sample_contract(archetype: str, n: int) -> None:
    image, label = generate_sample(archetype, n, seed=n)
    _check_image(image, archetype)
    _check_label(label, n)


@pytest.mark.parametrize("archetype", ["nuclei", "tissue"])
def test_thousand_cells(archetype: str) -> None:
    image, label = generate_sample(archetype, 1000, seed=3)
    _check_image(image, archetype)
    _check_label(label, 1000)


def _regions(label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fg = label > 0
    ring = ndimage.binary_dilation(fg, iterations=3) & ~fg  # just outside the objects
    far = ~ndimage.binary_dilation(fg, iterations=6)  # clear background
    return fg, ring, far


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrast_matches_labels(seed: int) -> None:
    """Each archetype's signal sits where its labels are, in the direction it renders."""
    # fluorescent nuclei: bright objects on a dark background
    image, label = generate_sample("nuclei", 50, seed)
    fg, _, far = _regions(label)
    assert image[2][fg].mean() - image[2][far].mean() > 0.12
    # ...and the label is aligned with the signal: the intensity drops right at the
    # object boundary, and a label shifted by 20 px loses most of the contrast
    ring2 = ndimage.binary_dilation(fg, iterations=2) & ~fg
    assert image[2][boundary_map(label)].mean() - image[2][ring2].mean() > 0.05
    shifted = np.roll(label, 20, axis=1) > 0
    aligned = image[2][fg].mean() - image[2][~fg].mean()
    assert image[2][shifted].mean() - image[2][~shifted].mean() < 0.5 * aligned

    # tissue: whole-cell signal inside cells; nuclear signal only inside cells
    image, label = generate_sample("tissue", 50, seed)
    fg, _, far = _regions(label)
    assert image[2][fg].mean() - image[2][far].mean() > 0.08
    assert image[1][fg].mean() - image[1][far].mean() > 0.035
    bright_nuclear = image[1] > 0.5
    assert bright_nuclear.sum() > 500 and fg[bright_nuclear].mean() > 0.97

    # phase contrast: dark cells on grey, bright halo around cultured cells
    image, label = generate_sample("culture", 50, seed)
    fg, ring, far = _regions(label)
    assert image[2][far].mean() - image[2][fg].mean() > 0.08
    assert image[2][ring].mean() - image[2][far].mean() > 0.02
    image, label = generate_sample("bacteria", 50, seed)
    fg, _, far = _regions(label)
    assert image[2][far].mean() - image[2][fg].mean() > 0.1

    # brightfield yeast: dark rim (the object boundary), brighter centre
    image, label = generate_sample("yeast", 50, seed)
    fg = label > 0
    rim = boundary_map(label)
    core = ndimage.distance_transform_edt(fg & ~rim) >= 2.5
    # local background (4-8 px out): clumps can sit in a brighter part of the field
    near = ndimage.binary_dilation(fg, iterations=8) & ~ndimage.binary_dilation(fg, iterations=4)
    assert image[2][near].mean() - image[2][rim].mean() > 0.08
    assert image[2][core].mean() - image[2][rim].mean() > 0.1


@pytest.mark.parametrize("archetype", ARCHETYPES)
def test_deterministic_and_seed_dependent(archetype: str) -> None:
    a_img, a_lab = generate_sample(archetype, 20, seed=7)
    b_img, b_lab = generate_sample(archetype, 20, seed=7)
    c_img, c_lab = generate_sample(archetype, 20, seed=8)
    assert a_img.tobytes() == b_img.tobytes() and a_lab.tobytes() == b_lab.tobytes()
    assert a_img.tobytes() != c_img.tobytes() and not np.array_equal(a_lab, c_lab)


def test_edge_cases() -> None:
    image, label = generate_sample("yeast", 0, seed=0)
    assert label.max() == 0 and image[2].max() > 0  # no cells: still a valid image
    image, label = generate_sample("tissue", 0, seed=0)
    assert label.max() == 0 and image[2].max() > 0
    image, label = generate_sample("bacteria", 12, seed=0, size=128)
    assert image.shape == (3, 128, 128) and label.shape == (128, 128) and label.max() == 12
    with pytest.raises(ValueError, match="unknown archetype"):
        generate_sample("plants", 5, seed=0)
    # far more cells than fit: fewer come back, still a valid label
    _, label = generate_sample("culture", 3000, seed=0, size=128)
    assert 0 < label.max() < 3000
    assert np.array_equal(np.unique(label)[1:], np.arange(1, label.max() + 1))


def test_generate_dataset_round_trip(tmp_path) -> None:
    counts = {"train": 6, "val": 2, "test": 2}
    manifest = generate_dataset(tmp_path / "syn", counts, cells=(4, 12), seed=3, progress=False)
    assert manifest["name"] == "synthetic" and manifest["licence"] == "Apache-2.0"
    assert manifest["converter"] == "data_prep.synthetic"
    assert manifest["converter_version"] == syn.GENERATOR_VERSION
    assert manifest["settings"] == {
        "n_images": counts, "cells": [4, 12], "archetypes": list(ARCHETYPES), "seed": 3,
        "size": 512, "generator_version": syn.GENERATOR_VERSION,
    }
    assert read_manifest(tmp_path / "syn") == manifest
    for split, n in counts.items():
        data = open_split(tmp_path / "syn", split, validate=True)
        assert len(data) == n == manifest["splits"][split]["n_images"]
        per_image = [int(lab.max()) for lab in data.labels]
        assert all(4 <= k <= 12 for k in per_image)
        n_objects = manifest["splits"][split]["n_objects"]
        assert sum(per_image) == n_objects == len(data.coco["annotations"])
        names = [im["file_name"] for im in data.coco["images"]]
        assert names == [f"{split}_{i:05d}_{ARCHETYPES[i % 5]}" for i in range(n)]
    # image i of a split is generate_sample with its derived seed: independent of the rest
    data = open_split(tmp_path / "syn", "train", validate=False)
    image_seed, _ = syn._image_seeds(3, "train", 4)
    image, label = generate_sample(ARCHETYPES[4], int(data.labels[4].max()), image_seed)
    assert np.array_equal(data.images[4], image) and np.array_equal(data.labels[4, 0], label)


def test_workers_give_same_bytes(tmp_path) -> None:
    counts = {"train": 3, "val": 1}
    one = generate_dataset(tmp_path / "a", counts, cells=(3, 8), seed=5, progress=False)
    two = generate_dataset(tmp_path / "b", counts, cells=(3, 8), seed=5, workers=2, progress=False)
    assert one["splits"] == two["splits"]  # includes the sha256 of every file


def test_ensure_synthetic_regenerates_only_on_change(tmp_path, monkeypatch) -> None:
    calls = []
    real = syn.generate_dataset

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(syn, "generate_dataset", counting)
    out = tmp_path / "cache" / "synthetic"
    counts = {"train": 2, "val": 1, "test": 1}
    assert ensure_synthetic(out, counts, cells=(3, 6), progress=False) == out
    mtime = (out / "manifest.json").stat().st_mtime_ns
    ensure_synthetic(out, counts, cells=[3, 6], archetypes=list(ARCHETYPES), progress=False)
    assert len(calls) == 1 and (out / "manifest.json").stat().st_mtime_ns == mtime
    ensure_synthetic(out, counts, cells=(3, 6), seed=1, progress=False)  # new params
    assert len(calls) == 2
    assert json.loads((out / "manifest.json").read_text())["settings"]["seed"] == 1
    assert sorted(p.name for p in out.parent.iterdir()) == [".synthetic.lock", "synthetic"]
    assert len(open_split(out, "train", validate=True)) == 2

    # two concurrent callers (e.g. DDP ranks): one generates, the other waits and reuses
    out2 = tmp_path / "cache" / "other"
    threads = [threading.Thread(target=ensure_synthetic, args=(out2, counts, (3, 6)),
                                kwargs={"progress": False}) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 3 and len(open_split(out2, "val", validate=True)) == 1


def test_cli(tmp_path, capsys) -> None:
    from data_prep.synthetic import main

    args = ["--out", str(tmp_path), "--n-train", "2", "--n-val", "1", "--n-test", "1",
            "--cells", "3", "6", "--archetypes", "nuclei,yeast", "--seed", "2", "--quiet"]
    assert main(args) == 0
    manifest = read_manifest(tmp_path / "synthetic")
    assert manifest["settings"]["archetypes"] == ["nuclei", "yeast"]
    assert manifest["splits"]["train"]["n_images"] == 2
    assert manifest["splits"]["train"]["sources"] == ["synthetic/nuclei", "synthetic/yeast"]
    assert len(open_split(tmp_path / "synthetic", "test", validate=True)) == 1
    assert main(["--out", str(tmp_path), "--archetypes", "plants", "--quiet"]) == 2
    assert "unknown archetypes" in capsys.readouterr().err
