"""`LabellingSession.segment_all` (the predictor's result, tiled or not, progress, cancel,
the embedding it leaves for prompts) and its outputs (features, TIFF + CSV like
`predict.py`), on a tiny random CellSAM checkpoint."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import count_calls
from fake_checkpoints import write_checkpoint

from cellsam.labelling import LabellingSession
from cellsam.tasks.predict import CSV_FIELDS

# as in test_predictor.py: a random CellFinder's scores sit near its prior, so open every
# threshold to get cells decoded at all
OPEN = {"box_threshold": 0.0, "iou_threshold": 0.0, "max_detections": 12, "min_area": 4}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    from cellsam.data.synthetic import generate_sample

    img, _ = generate_sample("culture", 12, seed=3, size=512)
    return img


def test_segment_all_is_the_predictors_result_and_seeds_the_cache(ckpt, image, monkeypatch):
    s = LabellingSession.from_checkpoint(ckpt, image, device="cpu", **OPEN)
    calls = count_calls(monkeypatch, s.model, "trunk")
    seen = []
    pred = s.segment_all(progress=lambda done, total: seen.append((done, total)))
    ref = s.predictor.predict(image)
    np.testing.assert_array_equal(pred.labels, ref.labels)
    np.testing.assert_allclose(pred.scores, ref.scores)
    assert pred.num_cells > 0 and seen == [(0, 1), (1, 1)]
    assert s.labels.dtype == np.int32 and (s.labels == pred.labels).all()
    feats = s.features()
    assert feats["index"].tolist() == list(range(1, pred.num_cells + 1))
    np.testing.assert_allclose(feats["score"], pred.scores, rtol=1e-6)
    assert set(feats["origin"]) == {"segment_all"}
    n_before = calls[0]  # segment_all's pass, then predict's
    s.box_prompt((10, 10, 60, 60))
    assert calls[0] == n_before  # the box reuses segment_all's embedding


def test_tiled_segment_all_reports_progress_and_can_be_cancelled(ckpt, image):
    big = np.concatenate([image, image[:, :, :300]], axis=2)  # 512 x 812
    s = LabellingSession.from_checkpoint(ckpt, big, device="cpu", tile_limit=600,
                                         tile_batch_size=2, **OPEN)
    assert not s.whole_image_embedding
    seen = []
    pred = s.segment_all(progress=lambda d, t: seen.append((d, t)))
    # tile 512 with 25 % overlap over 812 columns: starts 0, 300 -> 2 tiles, one batch
    assert seen == [(2, 2)]
    np.testing.assert_array_equal(pred.labels, s.predictor.predict(big).labels)

    class Stop(Exception):
        pass

    def cancel(done, total):
        raise Stop

    s.box_prompt((5, 5, 50, 50))
    before = s.labels.copy()
    with pytest.raises(Stop):
        s.segment_all(progress=cancel)
    np.testing.assert_array_equal(s.labels, before)  # unchanged by the cancelled run


def test_edits_keep_the_table_in_step(ckpt, image):
    s = LabellingSession.from_checkpoint(ckpt, image, device="cpu", **OPEN)
    pred = s.segment_all()
    n = pred.num_cells
    assert n >= 3
    s.delete(2)
    assert 2 not in s.features()["index"]
    target = s.merge([1, 3])
    f = s.features()
    row = f["index"].tolist().index(target)
    assert target == 1 and f["origin"][row] == "merge"
    assert f["score"][row] == pytest.approx(max(pred.scores[0], pred.scores[2]))
    mapping = s.renumber()
    assert sorted(mapping.values()) == list(range(1, n - 1))
    assert s.features()["index"].tolist() == list(range(1, n - 1))
    # painting in a viewer: a new id appears, an old one vanishes
    painted = s.labels.copy()
    painted[painted == 2] = 0
    painted[:5, :5] = 50
    s.set_labels(painted)
    f = s.features()
    assert 50 in f["index"] and 2 not in f["index"]
    assert f["origin"][f["index"].tolist().index(50)] == "labels"


def test_save_writes_predict_py_files(ckpt, image, tmp_path):
    import tifffile

    s = LabellingSession.from_checkpoint(ckpt, image, device="cpu", **OPEN)
    pred = s.segment_all()
    s.delete(1)
    r = s.box_prompt((200, 200, 240, 250))
    paths = s.save(tmp_path / "out", "img")
    assert [p.name for p in paths] == ["img.tif", "img.csv"]
    saved = tifffile.imread(paths[0])
    n = pred.num_cells  # one deleted, one added
    assert saved.dtype == np.uint16 and sorted(np.unique(saved))[1:] == list(range(1, n + 1))
    np.testing.assert_array_equal(saved > 0, s.labels > 0)
    with open(paths[1]) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == CSV_FIELDS and len(rows) == n
    last = rows[-1]  # the prompted cell has the largest id, so the last row
    assert math.isnan(float(last["score"])) and int(last["area"]) == r.mask.sum()
    assert float(last["predicted_iou"]) == pytest.approx(r.iou, abs=1e-4)
    assert float(rows[0]["score"]) == pytest.approx(pred.scores[1], abs=1e-4)
    paths = s.save(tmp_path / "out", "img2", overlay=True)
    assert paths[-1].name == "img2_overlay.png" and paths[-1].is_file()


def test_add_to_training_set_from_the_session(ckpt, image, tmp_path):
    from cellsam.data.format import open_split, read_manifest
    from cellsam.labelling import image_hash

    s = LabellingSession.from_checkpoint(ckpt, image, device="cpu", **OPEN)
    s.segment_all()
    r = s.add_to_training_set(tmp_path / "mine", "culture_3")
    data = open_split(tmp_path / "mine", "train", validate=True)
    assert len(data) == 1 and r.n_objects == int(data.labels.max())
    np.testing.assert_array_equal(data.images[0], s.prepared)  # 512 x 512: one tile
    record = read_manifest(tmp_path / "mine")["settings"]["labelling"]
    assert list(record["images"]) == [image_hash(image)]
    assert record["prep"]["clahe"] == s.predictor.settings.clahe
    s.delete(1)
    r2 = s.add_to_training_set(tmp_path / "mine", "culture_3")
    assert r2.replaced == "train" and len(open_split(tmp_path / "mine", "train")) == 1


def test_configure_changes_thresholds_and_keeps_the_cache(ckpt, image, monkeypatch):
    s = LabellingSession.from_checkpoint(ckpt, image, device="cpu", **OPEN)
    first, prepared = s.segment_all(), s.prepared.copy()
    high = float(np.median(first.scores))  # about half the cells pass it
    s.configure(box_threshold=high)
    assert s.predictor.settings.box_threshold == high and s.predictor.settings.min_area == 4
    calls = count_calls(monkeypatch, s.model, "trunk")
    s.box_prompt((10, 10, 60, 60))
    assert calls[0] == 0  # thresholds leave the embedding valid
    pred = s.segment_all()
    ref = LabellingSession.from_checkpoint(ckpt, image, device="cpu",
                                           **{**OPEN, "box_threshold": high}).segment_all()
    np.testing.assert_array_equal(pred.labels, ref.labels)
    assert 0 < pred.num_cells < first.num_cells
    s.configure(percentile=95.0)  # preprocessing: a new prepared image, no stale embeddings
    other = LabellingSession.from_checkpoint(ckpt, image, device="cpu", percentile=95.0)
    np.testing.assert_array_equal(s.prepared, other.prepared)
    assert not np.array_equal(s.prepared, prepared)
    n = calls[0]
    s.box_prompt((10, 10, 60, 60))
    assert calls[0] == n + 1
