"""Box and point prompts of `LabellingSession` on a tiny random model: windows, coordinates,
the cached embedding, masks inside their box's region, clicks honoured, and the pure
helpers (`exclude_negatives`, `choose_window`) checked by hand.

A random decoder's logits are arbitrary, so most checks use a mask threshold so low that
every decoded pixel is "cell": the mask is then exactly the region a prompt may fill, which
is computed by hand.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cellsam.inference import CellSAMPredictor, InferenceSettings
from cellsam.labelling import LabellingSession, NoDetectorError, prompt_only_model
from cellsam.labelling.prompts import (
    box_to_model,
    choose_window,
    decode_prompt,
    exclude_negatives,
    points_to_model,
)

ALL = 1e-6  # mask threshold: every pixel of the allowed region is cell
NONE = 1 - 1e-6  # no pixel is


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prompt_only_model("tiny", checkpoint=None).eval()  # 512 px input


def count_trunk(model, monkeypatch) -> list[int]:
    calls = [0]
    trunk = model.trunk

    def counted(images):
        calls[0] += images.shape[0]
        return trunk(images)

    monkeypatch.setattr(model, "trunk", counted)
    return calls


def session(model, shape=(512, 512), **settings) -> LabellingSession:
    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float32)
    s = InferenceSettings.from_preset("paper", **settings)
    return LabellingSession(CellSAMPredictor(model, s, device="cpu"), image)


def test_box_prompt_fills_exactly_the_grown_box_and_embeds_once(model, monkeypatch):
    calls = count_trunk(model, monkeypatch)
    s = session(model, mask_threshold=ALL)
    r = s.box_prompt((100, 120, 160, 170))
    # grown by 0.5 x size + 2 px (mask_margin): x 100-32=68 .. 160+32=192, y 95-2=93 .. 197
    assert r.cell_id == 1 and s.selected == 1 and r.bbox == (93, 68, 197, 192)
    assert r.mask.all() and (s.labels == 1).sum() == 104 * 124
    assert r.window == (0, 0, 512, 512)
    r2 = s.box_prompt((300, 300, 320, 310))
    assert r2.cell_id == 2 and r2.bbox == (293, 288, 317, 332)
    s.point_prompt([(310, 305)], [1])
    assert calls[0] == 1  # one encoder pass for the image, whatever the prompts
    assert set(s.features()["origin"]) == {"box", "points"}


def test_empty_mask_changes_nothing(model):
    s = session(model, mask_threshold=NONE)
    r = s.box_prompt((10, 10, 40, 40))
    assert r.cell_id is None and not s.labels.any() and s.selected is None


def test_box_prompt_replaces_a_cell_and_overwrites_neighbours(model):
    s = session(model, mask_threshold=ALL)
    s.box_prompt((100, 100, 140, 140))  # region 78..162
    s.box_prompt((200, 200, 220, 220))  # cell 2
    r = s.box_prompt((150, 150, 170, 170), cell_id=1)  # region 138..182: cell 1 moves
    assert r.cell_id == 1 and (s.labels == 1).sum() == 44 * 44
    assert s.labels[100, 100] == 0 and s.labels[140, 140] == 1
    # a new box covering all of cell 2 takes its pixels: cell 2 is gone and reported
    r = s.box_prompt((190, 190, 230, 230))
    assert r.cell_id == 3 and r.removed == (2,) and 2 not in s.cells
    assert sorted(s.features()["index"].tolist()) == [1, 3]


def test_box_and_point_coordinates_by_hand():
    window = (100, 200, 356, 456)  # 256 x 256 window, 512 model input: x2
    np.testing.assert_allclose(box_to_model(np.array([210, 110, 230, 130]), window, 512),
                               [20, 20, 60, 60])
    # pixel (x=200, y=100) is the window's first pixel: centre 0.5 x 2 = 1 -> SAM value 0.5
    np.testing.assert_allclose(points_to_model(np.array([[200.0, 100.0], [201, 102]]),
                                               window, 512), [[0.5, 0.5], [2.5, 4.5]])
    np.testing.assert_allclose(box_to_model(np.array([0, 0, 512, 512]), (0, 0, 512, 512), 512),
                               [0, 0, 512, 512])


def test_box_decoding_equals_the_models_own(model):
    emb = torch.randn(1, 64, 32, 32)
    box = np.array([30, 40, 90, 120], np.float32)
    with torch.no_grad():
        logits, iou = decode_prompt(model, emb, box=box)
        ref, ref_iou = model.decode(emb, torch.from_numpy(box)[None])
    torch.testing.assert_close(logits, ref[0])
    assert iou == pytest.approx(float(ref_iou[0]))


def test_point_prompt_sends_clicks_box_and_previous_mask(model):
    s = session(model, mask_threshold=ALL)
    seen = []

    def spy(module, args, kwargs):
        seen.append(kwargs)

    handle = model.sam.prompt_encoder.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        s.box_prompt((100, 120, 160, 170))
        s.point_prompt([(130, 140)], [1])
        s.point_prompt([(150, 160)], [0])
    finally:
        handle.remove()
    assert seen[0]["points"] is None and seen[0]["masks"] is None
    coords, labels = seen[2]["points"]
    # both clicks so far, in model pixels (window = image, input 512: x - 0 + 0.5 - 0.5)
    np.testing.assert_allclose(coords[0].numpy(), [[130, 140], [150, 160]])
    assert labels[0].tolist() == [1, 0]
    np.testing.assert_allclose(seen[2]["boxes"][0].numpy(), [100, 120, 160, 170])
    assert seen[1]["masks"].shape == (1, 1, 128, 128)  # the box prompt's low-res logits


def test_negative_click_removes_pixels_and_positive_click_extends(model):
    s = session(model, mask_threshold=ALL)
    s.box_prompt((100, 100, 200, 140))  # region y 78..162, x 48..252 (wide)
    before = (s.labels == 1).sum()
    r = s.point_prompt([(230, 120)], [0])  # near the right end
    assert r.cell_id == 1 and s.labels[120, 230] == 0
    # a rectangle has no neck to split at: the watershed gives the click only the pixels
    # nearer to it than to the rectangle's middle ridge
    assert 0.5 * before < (s.labels == 1).sum() < before
    assert s.labels[120, 100] == 1  # the far end stays
    # a positive click below the box widens the region the mask may fill
    s2 = session(model, mask_threshold=ALL)
    s2.box_prompt((100, 100, 140, 140))  # region 78..162
    r = s2.point_prompt([(120, 170)], [1])  # reach: y 100..171 -> grown 62.5..206.5
    assert s2.labels[170, 120] == 1 and r.bbox[2] > 162


def test_new_cell_from_clicks_alone(model):
    s = session(model, mask_threshold=ALL)
    r = s.point_prompt([(50, 60)], [1])
    assert r.cell_id == 1 and s.labels[60, 50] == 1  # no box: the whole window may be cell
    s.select(None)
    r = s.point_prompt([(400, 400), (420, 420)], [1, 0])
    assert r.cell_id == 2 and s.labels[420, 420] != 2


def test_exclude_negatives_by_hand():
    rr, cc = np.indices((40, 60))
    a = np.hypot(rr - 20, cc - 18) <= 10
    b = np.hypot(rr - 20, cc - 38) <= 10
    eight = a | b  # two touching discs
    out = exclude_negatives(eight, np.zeros((0, 2)), np.array([[38.0, 20.0]]))
    assert not out[20, 38] and (out & a).sum() >= 0.95 * a.sum() and (out & b).sum() <= 12
    out = exclude_negatives(eight, np.array([[18.0, 20.0]]), np.array([[38.0, 20.0]]))
    assert (out & a).sum() >= 0.95 * a.sum() and not out[20, 38]
    # a click off the mask changes nothing (the same array back)
    assert exclude_negatives(eight, np.zeros((0, 2)), np.array([[1.0, 1.0]])) is eight
    # one round cell clicked at its centre: its inscribed disc goes
    out = exclude_negatives(a, np.zeros((0, 2)), np.array([[18.0, 20.0]]))
    assert not out[20, 18] and out.sum() < 0.2 * a.sum()


def test_windows_of_a_tiled_image_and_their_cache(model, monkeypatch):
    calls = count_trunk(model, monkeypatch)
    s = session(model, shape=(400, 700), mask_threshold=ALL, tiling="always", tile_size=256,
                tile_overlap=0.25)
    assert not s.whole_image_embedding
    r1 = s.box_prompt((20, 20, 60, 60))
    assert r1.window == (0, 0, 256, 256) and calls[0] == 1
    s.box_prompt((30, 70, 50, 90))  # same tile again: cached
    assert calls[0] == 1
    r3 = s.box_prompt((600, 300, 640, 340))
    assert r3.window == (144, 444, 400, 700) and calls[0] == 2
    assert r3.bbox == (278, 578, 362, 662)  # region of the box, in image coordinates
    # a box larger than a tile gets a square window of its own around its grown box
    # (x -52..552 -> 0..552, y -102..502 -> 0..400), as square as the image allows
    r4 = s.box_prompt((100, 50, 400, 350))
    assert r4.window == (0, 0, 400, 552) and calls[0] == 3
    r5 = s.box_prompt((300, 150, 340, 250))  # grown x 278..362, y 98..302: no tile holds it
    assert r5.window == (72, 192, 328, 448) and calls[0] == 4
    settings = InferenceSettings(tile_size=256, tile_overlap=0.25)
    assert choose_window(np.array([10, 10, 20, 20]), (400, 700), settings, True) == \
        (0, 0, 400, 700)


def test_prompt_only_model_cannot_segment_all(model):
    s = session(model)
    assert not s.has_detector
    with pytest.raises(NoDetectorError, match="prompt-only"):
        s.segment_all()
    with pytest.raises(NoDetectorError):
        s.predictor.predict(s.image)


def test_bad_prompts_are_refused(model):
    s = session(model)
    with pytest.raises(ValueError, match="covers no pixel"):
        s.box_prompt((600, 600, 700, 700))
    with pytest.raises(ValueError, match="one label per point"):
        s.point_prompt([(1, 1), (2, 2)], [1])
    with pytest.raises(ValueError, match="outside"):
        s.point_prompt([(-5, 1)], [1])
    with pytest.raises(KeyError):
        s.point_prompt([(5, 5)], [1], cell_id=3)


def test_fast_box_decoding_gives_the_standard_mask(model):
    fast = session(model, decoder="fast")
    std = session(model, decoder="standard")
    for box in [(100, 120, 160, 170), (0, 0, 30, 50), (450, 400, 512, 512)]:
        a, b = fast.box_prompt(box), std.box_prompt(box)
        assert a.bbox == b.bbox and (a.mask == b.mask).mean() > 0.999
        assert a.iou == pytest.approx(b.iou, abs=1e-5)
        # the low-res logits kept for clicks: equal inside the decoded window
        la, lb = fast._prompts[a.cell_id].logits, std._prompts[b.cell_id].logits
        inside_window = la > la.min()
        torch.testing.assert_close(la[inside_window], lb[inside_window], atol=1e-4, rtol=1e-4)
