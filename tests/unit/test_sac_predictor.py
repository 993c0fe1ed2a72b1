"""SACPredictor pieces (cellsam/inference/sac_predictor.py): point-prompt settings, decoding
of point prompts into cells against the plain full-image upsampling, component boxes in
image pixels, and the inherited pipeline on a hand-made prompter output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_sac_model import tiny_sac

from cellsam.inference.decode import upsample_full
from cellsam.inference.point_prompts import CellPrompt
from cellsam.inference.sac_predictor import SACPredictor, decode_point_cells, point_settings
from cellsam.inference.settings import InferenceSettings


def _prompt(x: float, y: float, box, score: float) -> CellPrompt:
    return CellPrompt(points=np.array([[x, y], [0.0, 0.0]], np.float32),
                      labels=np.array([1, -1]), box=np.array(box, np.float32), score=score)


def test_point_settings_and_their_validation():
    s = InferenceSettings(prompt_threshold=0.3, prompt_min_area=5, prompt_split="distance",
                          prompt_selection="max_prob", points_per_cell=3,
                          prompt_negatives="neighbours", max_detections=7)
    p = point_settings(s)
    assert (p.threshold, p.min_area, p.split, p.selection, p.points_per_cell, p.negatives,
            p.max_cells) == (0.3, 5, "distance", "max_prob", 3, "neighbours", 7)
    for bad in ({"prompt_split": "watershed"}, {"prompt_selection": "peak"},
                {"prompt_negatives": "all"}, {"points_per_cell": 0},
                {"prompt_threshold": 1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            InferenceSettings(**bad)


def test_decoded_cells_equal_full_upsampling():
    """With `mask_margin=None` each cell's logits are the decoder's low-res logits upsampled
    to the whole image (`F.interpolate`), and its box is the component box scaled to it."""
    model = tiny_sac()
    images = torch.rand(1, 3, 128, 128)
    prompts = [_prompt(20, 30, [10, 20, 31, 41], 0.9), _prompt(90, 70, [80, 60, 101, 81], 0.7)]
    settings = InferenceSettings(iou_threshold=-10.0, mask_margin=None, box_batch_size=1)
    with torch.no_grad():
        emb = model.embed(model.trunk(images))
        cells = decode_point_cells(model, emb, prompts, (256, 192), settings)
        pts = torch.tensor(np.stack([p.points for p in prompts]))
        low, iou = model.decode_points(emb, pts, torch.tensor([[1, -1], [1, -1]]))
    full = upsample_full(low, (256, 192)).numpy()
    assert [c.score for c in cells] == pytest.approx([0.9, 0.7])
    assert [c.iou for c in cells] == pytest.approx(iou.tolist(), rel=1e-5)
    for c, ref, p in zip(cells, full, prompts):
        assert (c.y0, c.x0) == (0, 0) and c.logits.shape == (256, 192)
        np.testing.assert_allclose(c.logits, ref, atol=1e-4)
        np.testing.assert_array_equal(c.mask, c.logits > settings.mask_logit_threshold)
        np.testing.assert_allclose(c.box, p.box * np.array([1.5, 2.0, 1.5, 2.0]))
    strict = InferenceSettings(iou_threshold=float(iou.max()) + 0.01, mask_margin=None)
    assert decode_point_cells(model, emb, prompts, (256, 192), strict) == []
    assert decode_point_cells(model, emb, [], (256, 192), settings) == []


def test_predictor_runs_the_prompter_maps_through_discrimination():
    model = tiny_sac()
    fg = torch.full((1, 1, 128, 128), -10.0)
    fg[:, :, 10:30, 20:40] = 10.0
    fg[:, :, 80:100, 60:90] = 10.0
    model.prompt_maps = lambda images, features=None: {"foreground": fg, "centre": fg.clone()}
    predictor = SACPredictor(model, InferenceSettings(iou_threshold=-10.0, min_area=0,
                                                      prompt_negatives="none"), device="cpu")
    seen = []
    inner = predictor.prompts
    predictor.prompts = lambda f, c: seen.append(inner(f, c)) or seen[-1]
    predictor.predict_batch(torch.rand(1, 3, 128, 128), size=(256, 256))
    (prompts,) = seen
    boxes = sorted(p.box.tolist() for p in prompts)
    assert boxes == [[20, 10, 40, 30], [60, 80, 90, 100]]
    assert all(p.score == pytest.approx(1.0, abs=1e-4) for p in prompts)
    with pytest.raises(TypeError, match="SAC model"):
        SACPredictor(torch.nn.Linear(1, 1))
