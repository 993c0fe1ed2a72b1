"""CellSAMPredictor on a tiny random model: inputs, outputs, settings, bad input."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_checkpoints import write_checkpoint

from cellsam.inference import CellSAMPredictor, EmptyImageWarning, InferenceSettings

# A random tiny CellFinder scores every query near its prior (~0.01): a zero box threshold
# and IoU threshold let its boxes through so that masks get decoded and composed.
OPEN = {"box_threshold": 0.0, "iou_threshold": 0.0, "max_detections": 12, "min_area": 4}

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt",
                            {"preset": "release", "box_threshold": 0.0, "iou_threshold": 0.0,
                             "max_detections": 12, "min_area": 4})


@pytest.fixture(scope="module")
def predictor(ckpt) -> CellSAMPredictor:
    return CellSAMPredictor.from_checkpoint(ckpt, device="cpu", preset="paper", **OPEN)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    from cellsam.data.synthetic import generate_sample

    img, _ = generate_sample("culture", 12, seed=3, size=512)
    return img


def check_prediction(result, shape):
    assert result.labels.shape == shape and result.labels.dtype == np.uint16
    n = result.num_cells
    assert n > 0
    assert sorted(np.unique(result.labels[result.labels > 0])) == list(range(1, n + 1))
    assert result.scores.shape == (n,) and result.iou.shape == (n,)
    assert result.boxes.shape == (n, 4) and result.prompt_boxes.shape == (n, 4)
    assert (np.diff(result.scores) <= 0).all()  # labels follow decreasing box score
    x0, y0, x1, y1 = result.boxes[0].astype(int)
    ys, xs = np.nonzero(result.labels == 1)
    assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (y0, x0, y1, x1)


def test_settings_from_checkpoint_and_overrides(ckpt):
    p = CellSAMPredictor.from_checkpoint(ckpt, device="cpu")
    assert p.settings.preset == "release" and p.settings.kmeans_adjust
    assert (p.settings.box_threshold, p.settings.mask_threshold) == (0.0, 0.4)
    p = CellSAMPredictor.from_checkpoint(ckpt, device="cpu", mask_threshold=0.6)
    assert (p.settings.mask_threshold, p.settings.iou_threshold) == (0.6, 0.0)
    # an explicit preset changes the base; the checkpoint's own values still apply
    p = CellSAMPredictor.from_checkpoint(ckpt, device="cpu", preset="paper")
    assert p.settings == InferenceSettings.from_preset(
        "paper", box_threshold=0.0, iou_threshold=0.0, max_detections=12, min_area=4)
    assert not p.model.training


def test_stage1_checkpoint_is_refused(tmp_path):
    from cellsam.utils.checkpoint import CheckpointError

    path = write_checkpoint(tmp_path / "s1.ckpt", stage="finder")
    with pytest.raises(CheckpointError, match=r"s1\.ckpt: a stage-1 .*stage-2 checkpoint"):
        CellSAMPredictor.from_checkpoint(path, device="cpu")


def test_any_layout_and_dtype(predictor, image):
    # [3, H, W] float with the synthetic image's nuclear + whole-cell channels
    res = predictor.predict(image[:, :300, :420])
    check_prediction(res, (300, 420))
    # the same content given as [H, W, C] uint16 with channels by name
    hwc = (np.moveaxis(image[1:, :300, :420], 0, -1) * 4000).astype(np.uint16)
    res2 = predictor.predict(hwc, channels={"nuclear": 0, "whole_cell": 1})
    check_prediction(res2, (300, 420))
    # a 2-D uint8 image (one channel -> whole-cell)
    res3 = predictor.predict((image[2, :200, :260] * 255).astype(np.uint8))
    check_prediction(res3, (200, 260))


def test_tiled_equals_untiled_when_one_tile_holds_the_image(predictor, image):
    img = image[:, :400, :480]
    untiled = predictor.predict(img, tiling=False)
    tiled = predictor.predict(img, tiling=True)  # tile_size 512: one tile, the same path
    assert untiled.num_cells > 0
    np.testing.assert_array_equal(tiled.labels, untiled.labels)
    np.testing.assert_allclose(tiled.scores, untiled.scores)


def test_large_image_is_tiled_and_labels_cover_it(predictor, image):
    p = predictor.configure(tile_limit=600, tile_batch_size=2, max_detections=4)
    big = np.concatenate([image, image[:, :, ::-1]], axis=2)[:, :, :900]  # [3, 512, 900]
    assert p.use_tiling(big.shape[-2:]) and not predictor.use_tiling(big.shape[-2:])
    res = p.predict(big)
    check_prediction(res, (512, 900))


def test_predict_batch_matches_predict(predictor, image):
    from cellsam.preprocess import normalize_channels

    s = predictor.settings
    prepared = normalize_channels(image, s.percentile, s.clahe, s.clahe_kernel)
    inputs = torch.from_numpy(np.stack([prepared, prepared]))
    batch = predictor.predict_batch(inputs)
    assert len(batch) == 2
    single = predictor.predict(image)
    for res in batch:
        np.testing.assert_array_equal(res.labels, single.labels)
    (small,) = predictor.predict_batch(inputs[:1], size=(256, 256))
    assert small.labels.shape == (256, 256)


def test_empty_image_gives_empty_labels_and_warning(predictor):
    with pytest.warns(EmptyImageWarning, match="no signal"):
        res = predictor.predict(np.zeros((64, 80), np.uint16))
    assert res.labels.shape == (64, 80) and res.labels.max() == 0 and res.num_cells == 0
    with pytest.warns(EmptyImageWarning):
        assert predictor.predict(np.full((32, 32), 7.0)).num_cells == 0  # constant image


def test_bad_inputs_raise_clear_errors(predictor):
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    img[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        predictor.predict(img)
    with pytest.raises(ValueError, match=r"\(2, 3, 64, 64\)"):
        predictor.predict(np.ones((2, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="empty"):
        predictor.predict(np.zeros((0, 64), np.float32))
    with pytest.raises(ValueError, match="channel"):
        predictor.predict(np.ones((64, 64, 2)), channels={"nuclear": 5})


def test_overlap_rules_and_no_detections(predictor, image):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a real image gives no warning
        for rule in ("score", "release"):
            res = predictor.configure(overlap=rule).predict(image[:, :256, :256])
            assert res.labels.dtype == np.uint16
    none = predictor.configure(box_threshold=1.0).predict(image)
    assert none.num_cells == 0 and none.labels.shape == (512, 512)


def test_predict_many_keeps_order_and_handles_empty(predictor, image):
    images = [image[:, :256, :256], np.zeros((40, 40)), image[:, 256:, 256:]]
    with pytest.warns(EmptyImageWarning):
        results = list(predictor.predict_many(images, batch_size=2))
    assert [r.labels.shape for r in results] == [(256, 256), (40, 40), (256, 256)]
    assert results[1].num_cells == 0
    np.testing.assert_array_equal(results[0].labels, predictor.predict(images[0]).labels)
