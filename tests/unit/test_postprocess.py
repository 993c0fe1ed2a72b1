"""Inference settings and presets, the k-means score threshold, mask clean-up, label composition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellsam.inference.postprocess import (
    Cell,
    InferenceSettings,
    clean_mask,
    compose_labels,
    postprocess_cells,
    score_threshold,
    suppress_duplicates,
    two_means_1d,
)
from cellsam.ops.masks import label_dtype

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_presets_match_reference():
    paper = InferenceSettings.from_preset("paper")
    assert (paper.box_threshold, paper.iou_threshold, paper.mask_threshold) == (0.4, 0.4, 0.5)
    assert not paper.kmeans_adjust and paper.overlap == "argmax"
    release = InferenceSettings.from_preset("release")
    assert (release.box_threshold, release.iou_threshold, release.mask_threshold) == (0.4, 0.5, 0.4)
    assert release.kmeans_adjust and release.overlap == "release" and release.min_area == 25


def test_overrides_and_errors():
    s = InferenceSettings.from_preset("release", box_threshold=0.3, box_batch_size=8)
    assert (s.box_threshold, s.box_batch_size, s.iou_threshold) == (0.3, 8, 0.5)
    assert s.preset == "release"
    with pytest.raises(TypeError):
        InferenceSettings.from_preset("paper", not_a_setting=1)
    with pytest.raises(ValueError, match="overlap rule"):
        InferenceSettings.from_preset("paper", overlap="largest")
    with pytest.raises(ValueError, match="unknown inference preset"):
        InferenceSettings.from_preset("fast")
    with pytest.raises(ValueError, match="mask_threshold"):
        InferenceSettings(mask_threshold=1.0)


def test_two_means_and_kmeans_threshold():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0.0, 0.1, 900), rng.uniform(0.8, 1.0, 100)])
    lo, hi = two_means_1d(scores)
    assert lo == pytest.approx(scores[:900].mean()) and hi == pytest.approx(scores[900:].mean())
    from scipy.cluster.vq import kmeans2

    centres, _ = kmeans2(scores[:, None], 2, seed=0, minit="++")
    assert sorted(centres[:, 0]) == pytest.approx([lo, hi], abs=1e-6)
    adjusted = InferenceSettings.from_preset("release")
    expected = 0.66 * 0.4 + 0.33 * (lo + hi) / 2
    assert score_threshold(scores, adjusted) == pytest.approx(expected)
    assert score_threshold(scores, InferenceSettings()) == 0.4
    assert two_means_1d(np.full(5, 0.3)) == (0.3, 0.3)


def test_clean_mask_fills_holes_removes_islands_and_small():
    m = np.zeros((40, 40), bool)
    m[5:25, 5:25] = True
    m[12:16, 12:16] = False  # hole
    m[30:33, 30:33] = True  # island
    s = InferenceSettings()
    out = clean_mask(m, s)
    assert out[12:16, 12:16].all() and not out[30:33, 30:33].any()
    assert out.sum() == 400
    tiny = np.zeros((10, 10), bool)
    tiny[2:6, 2:6] = True  # 16 px < min_area 25
    assert not clean_mask(tiny, s).any()
    assert clean_mask(tiny, InferenceSettings(min_area=10)).sum() == 16
    kept = clean_mask(m, InferenceSettings(fill_holes=False, remove_islands=False))
    assert (kept == m).all()


def _cell(y0, x0, h, w, score, logit=1.0):
    mask = np.ones((h, w), bool)
    return Cell(y0=y0, x0=x0, mask=mask, score=score, iou=0.9,
                box=np.array([x0, y0, x0 + w, y0 + h], np.float32),
                logits=np.full((h, w), logit, np.float32))


def test_compose_overlap_rules():
    a = _cell(0, 0, 10, 10, score=0.9, logit=1.0)
    b = _cell(5, 5, 10, 10, score=0.5, logit=3.0)
    lab, kept = compose_labels([a, b], (20, 20), "score")
    assert lab[7, 7] == 1 and list(kept) == [0, 1] and lab.dtype == np.uint16
    lab, _ = compose_labels([a, b], (20, 20), "release")
    assert lab[7, 7] == 2  # the lower-scored mask wins
    lab, _ = compose_labels([a, b], (20, 20), "argmax")
    assert lab[7, 7] == 2  # larger logit
    a.logits[:] = 5.0
    lab, _ = compose_labels([a, b], (20, 20), "argmax")
    assert lab[7, 7] == 1 and lab[12, 12] == 2 and lab[2, 2] == 1
    # a cell covered completely by a winner disappears; ids stay consecutive
    c = _cell(1, 1, 3, 3, score=0.1)
    lab, kept = compose_labels([a, c, b], (20, 20), "score")
    assert list(kept) == [0, 2] and set(np.unique(lab)) == {0, 1, 2}
    assert label_dtype(65535) is np.uint16 and label_dtype(65536) is np.uint32


def test_postprocess_cells_tightens_crops():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 6:16] = True
    cell = Cell(y0=100, x0=50, mask=mask, score=0.5, iou=0.5, box=np.zeros(4, np.float32),
                logits=np.zeros((20, 20), np.float32))
    (out,) = postprocess_cells([cell], InferenceSettings())
    assert (out.y0, out.x0, out.mask.shape, out.logits.shape) == (105, 56, (10, 10), (10, 10))
    assert postprocess_cells([Cell(0, 0, np.zeros((4, 4), bool), 0.5, 0.5, np.zeros(4))],
                             InferenceSettings()) == []


def test_suppress_duplicates_by_overlap_of_the_smaller_area():
    big = _cell(0, 0, 10, 10, score=0.9)         # area 100
    inside = _cell(2, 2, 4, 4, score=0.8)        # area 16, all inside `big`: a fragment
    neighbour = _cell(0, 8, 10, 10, score=0.7)   # shares 2 x 10 = 20 px: 20 % of 100
    far = _cell(30, 30, 5, 5, score=0.6)         # crops do not overlap
    half = _cell(0, 15, 10, 10, score=0.5)       # shares 10 x 3 = 30 px of `neighbour`'s 100
    kept = suppress_duplicates([big, inside, neighbour, far, half], max_overlap=0.25)
    assert kept == [big, neighbour, far]         # 16/16 > 0.25, 0.2 <= 0.25, 0.3 > 0.25
    kept = suppress_duplicates([big, inside, neighbour, far, half], max_overlap=0.35)
    assert kept == [big, neighbour, far, half]
    assert suppress_duplicates([], 0.5) == []
    # order is priority: the lower-scored fragment goes, whichever is larger
    assert suppress_duplicates([inside, big], 0.5) == [inside]


def test_suppress_duplicates_in_postprocess_and_settings():
    a, b = _cell(0, 0, 10, 10, score=0.9), _cell(1, 1, 10, 10, score=0.8)  # 81 % shared
    assert len(postprocess_cells([a, b], InferenceSettings())) == 2  # paper: off
    s = InferenceSettings(duplicate_overlap=0.5)
    assert [c.score for c in postprocess_cells([a, b], s)] == [0.9]
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="duplicate_overlap"):
            InferenceSettings(duplicate_overlap=bad)
    assert s.changed_from_preset() == {"duplicate_overlap": 0.5}
    assert InferenceSettings.from_preset("release").changed_from_preset() == {}
