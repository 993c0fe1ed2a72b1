"""experiments/tune_on_val.py: decoding once and filtering equals decoding per setting."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import ROOT

from cellsam.inference import CellSAMPredictor
from cellsam.inference.settings import InferenceSettings


def _tune_module():
    spec = importlib.util.spec_from_file_location("tune_on_val",
                                                  ROOT / "experiments" / "tune_on_val.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("duplicate_overlap", [None, 0.3])
def test_filtered_cells_equal_the_predictor_at_each_threshold(tiny_model, duplicate_overlap):
    tune = _tune_module()
    torch.manual_seed(3)
    inputs = torch.rand(1, 3, tiny_model.image_size, tiny_model.image_size)
    hw = (96, 96)
    base = CellSAMPredictor(tiny_model, InferenceSettings(
        min_area=1, duplicate_overlap=duplicate_overlap), device="cpu")
    with torch.no_grad():
        features = tiny_model.trunk(inputs)
    out = tiny_model.finder(features)
    scores = out["pred_logits"][..., 0].sigmoid().flatten().detach().numpy()
    boxes = [float(np.quantile(scores, q)) for q in (0.3, 0.7)]
    cells = base.configure(box_threshold=boxes[0], iou_threshold=-1.0,
                           duplicate_overlap=None).segment_inputs(None, [hw], features)
    ious = np.array([c.iou for cs in cells for c in cs])
    assert len(ious) > 5
    iou_grid = [-1.0, float(np.median(ious))]
    seen = set()
    for box in boxes:
        for iou in iou_grid:
            expected = base.configure(box_threshold=box, iou_threshold=iou).predict_batch(
                None, hw, features)
            for cs, exp in zip(cells, expected):
                got = tune.kept_labels(cs, box, iou, base.settings, hw)
                np.testing.assert_array_equal(got, exp.labels)
                seen.add(int(exp.labels.max()))
    assert len(seen) >= 3  # the thresholds really change what is kept
