"""Batched and fast box decoding give the masks of one-box-at-a-time decoding."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from cellsam.inference.decode import (
    LowRes,
    box_windows,
    decode_batched,
    decode_cells,
    decode_fast,
    grown_boxes,
    lowres_windows,
    upsample_full,
    upsample_windows,
)
from cellsam.inference.settings import InferenceSettings


@pytest.fixture(scope="module")
def setup():
    from cellsam.models.cellsam import build_cellsam

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_cellsam(sam={"variant": "tiny", "checkpoint": None},
                              finder={"hidden_dim": 32, "ffn_dim": 64, "num_heads": 4,
                                      "num_encoder_layers": 1, "num_decoder_layers": 2,
                                      "num_queries": 16}).eval()
    with torch.no_grad():
        emb = model.embed(model.trunk(torch.rand(1, 3, 512, 512)))
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(24, 2, generator=g) * 440
    wh = torch.rand(24, 2, generator=g) * 60 + 6
    boxes = torch.cat([xy, xy + wh], 1)
    return model, emb, boxes


def test_batched_equals_one_at_a_time(setup):
    model, emb, boxes = setup
    with torch.no_grad():
        l_batch, i_batch = decode_batched(model, emb, boxes, batch_size=10)
        l_one, i_one = decode_batched(model, emb, boxes, batch_size=1)
    assert l_batch.shape == (24, 128, 128)
    torch.testing.assert_close(l_batch, l_one, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(i_batch, i_one, atol=1e-5, rtol=1e-5)
    # the thresholded masks agree except where a logit sits on the threshold itself
    differ = (l_batch > 0) != (l_one > 0)
    assert not (differ & (l_one.abs() > 1e-4)).any()


def test_fast_decoder_equals_standard(setup):
    model, emb, boxes = setup
    with torch.no_grad():
        ref, iou_ref = decode_batched(model, emb, boxes)
        low, iou, keep = decode_fast(model, emb, boxes)
    torch.testing.assert_close(low.logits, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, iou_ref, atol=1e-5, rtol=1e-5)
    assert keep.tolist() == list(range(24))
    thr = float(iou_ref.median())
    _, _, keep = decode_fast(model, emb, boxes, iou_threshold=thr)
    assert keep.tolist() == torch.nonzero(iou_ref >= thr).flatten().tolist()


@pytest.mark.parametrize("hw", [(700, 600), (300, 512), (512, 512)])
def test_window_upsampling_equals_full(setup, hw):
    model, emb, boxes = setup
    H, W = hw
    with torch.no_grad():
        ref, _ = decode_batched(model, emb, boxes)
        full = upsample_full(ref, hw)
        img_boxes = boxes * torch.tensor([W / 512, H / 512, W / 512, H / 512])
        win = box_windows(grown_boxes(img_boxes, hw, margin=0.5), hw)
        up = upsample_windows(LowRes(ref, torch.zeros(24, 2, dtype=torch.long), (128, 128)),
                              win, hw)
        # the fast decoder's windows of the low-res grid give the same pixels
        low, _, _ = decode_fast(model, emb, boxes, lowres_windows(win, hw, (128, 128)))
        up_fast = upsample_windows(low, win, hw)
    assert low.logits.shape[-1] < 128  # only windows were upsampled
    for k in range(24):
        y0, x0, y1, x1 = win[k].tolist()
        assert y0 <= img_boxes[k, 1] and x0 <= img_boxes[k, 0]  # window holds the box
        assert y1 >= min(H, img_boxes[k, 3]) and x1 >= min(W, img_boxes[k, 2])
        torch.testing.assert_close(up[k], full[k, y0:y1, x0:x1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(up_fast[k], full[k, y0:y1, x0:x1], atol=1e-4, rtol=1e-4)


def test_decode_cells_same_for_any_batch_size_and_decoder(setup):
    model, emb, boxes = setup
    scores = torch.linspace(0.9, 0.5, 24)
    results = {}
    for decoder in ("standard", "fast"):
        for bs in (1, 7, 64):
            s = InferenceSettings(iou_threshold=0.0, box_batch_size=bs, decoder=decoder)
            results[decoder, bs] = decode_cells(model, emb, boxes, scores, (600, 500), s)
    ref = results["standard", 1]
    assert len(ref) == 24 and [c.score for c in ref] == pytest.approx(scores.tolist())
    for key, cells in results.items():
        assert len(cells) == len(ref), key
        for a, b in zip(ref, cells):
            # each mask lives on its own box's window, whatever shares its batch; same
            # pixels wherever the logit is not on the threshold itself
            assert a.bbox == b.bbox, key
            assert not ((a.mask != b.mask) & (np.abs(a.logits) > 1e-3)).any(), key
    # the IoU threshold drops boxes before any mask is made
    s = InferenceSettings(iou_threshold=1.0)
    assert decode_cells(model, emb, boxes, scores, (512, 512), s) == []
