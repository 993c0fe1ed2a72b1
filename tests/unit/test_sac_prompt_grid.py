"""experiments/sac_prompt_grid.py: grid parsing, the test split's one-factor rows, and the
once-computed maps giving the predictor's own labels."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import ROOT
from test_sac_model import tiny_sac

from cellsam.inference.sac_predictor import SACPredictor
from cellsam.inference.settings import InferenceSettings


def _grid_module():
    spec = importlib.util.spec_from_file_location(
        "sac_prompt_grid", ROOT / "experiments" / "sac_prompt_grid.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_grid_values_are_typed_as_the_settings():
    g = _grid_module()
    grid = g.parse_grid(["prompt_selection=centroid,max_prob", "points_per_cell=1,3",
                         "prompt_threshold=0.4,0.5", "fill_holes=true,false"])
    assert grid == {"prompt_selection": ["centroid", "max_prob"], "points_per_cell": [1, 3],
                    "prompt_threshold": [0.4, 0.5], "fill_holes": [True, False]}
    assert len(g.grid_rows(grid)) == 16
    # None only where it is a value; a setting's own word stays a word; ints widen to float
    assert g.parse_grid(["mask_margin=none,0.5", "prompt_negatives=none,both",
                         "box_threshold=1"]) == {
        "mask_margin": [None, 0.5], "prompt_negatives": ["none", "both"], "box_threshold": [1.0]}
    assert type(g.parse_grid(["box_threshold=1"])["box_threshold"][0]) is float
    for bad, msg in (("threshold=0.5", "unknown"), ("points_per_cell", "key=value"),
                     ("fill_holes=maybe", "not of type bool"),
                     ("points_per_cell=1.5", "not of type int"),
                     ("points_per_cell=true", "not of type int"),
                     ("prompt_threshold=high", "not of type float")):
        with pytest.raises(SystemExit, match=msg):
            g.parse_grid([bad])


def test_test_rows_change_one_factor_at_a_time():
    g = _grid_module()
    grid = {"a": [1, 2, 3], "b": ["x", "y"]}
    rows = g.ablation_rows({"a": 2, "b": "y"}, grid)
    assert rows == [{"a": 2, "b": "y"}, {"a": 1, "b": "y"}, {"a": 3, "b": "y"},
                    {"a": 2, "b": "x"}]


def test_one_factor_choice_per_key():
    g = _grid_module()
    grid = {"a": [1, 2, 3], "b": ["x", "y"]}
    base = {"a": 2, "b": "y"}
    f1 = {(2, "y"): 0.5, (1, "y"): 0.6, (3, "y"): 0.4, (2, "x"): 0.5}
    rows = [{**r, "f1_50_mean": f1[(r["a"], r["b"])]} for r in g.ablation_rows(base, grid)]
    # a: 1 beats the base; b: "x" only ties the base, so the base value stays
    assert g.choose_per_key(base, rows, grid) == {"a": 1, "b": "y"}


def test_maps_once_then_settings_equal_the_predictor():
    g = _grid_module()
    torch.manual_seed(0)
    model = tiny_sac().eval()
    fg = torch.full((2, 1, 128, 128), -6.0)
    fg[0, :, 10:30, 20:40] = 6.0
    fg[0, :, 80:100, 60:90] = 3.0
    fg[1, :, 40:70, 40:56] = 1.0
    model.prompt_maps = lambda images, features=None: {"foreground": fg[:len(images)],
                                                       "centre": fg[:len(images)].clone()}
    base = SACPredictor(model, InferenceSettings(iou_threshold=-10.0, min_area=0,
                                                 mask_threshold=0.45), device="cpu")
    images = torch.rand(2, 3, 128, 128)

    class Dataset(list):
        pass

    dataset = Dataset({"image": im} for im in images)
    inputs = g.precompute(base, dataset, batch=2)
    hw = (192, 160)
    counts = set()
    for row in g.grid_rows({"prompt_negatives": ["none", "both"], "points_per_cell": [1, 3],
                            "prompt_threshold": [0.5, 0.8]}):
        p = base.configure(**row)
        want = p.predict_batch(images, size=hw)
        for (f, c, e), w in zip(inputs, want):
            got = g.cells_to_prediction(p.cells_from_maps(f, c, e, hw), hw, p.settings.overlap)
            np.testing.assert_array_equal(got.labels, w.labels)
            counts.add(int(w.labels.max()))
    assert counts >= {0, 1, 2}  # the settings change what is found
