"""Dataset format: writer/reader round trip and one clear error per kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cellsam.data.format import (
    DatasetFormatError,
    SplitWriter,
    open_split,
    verify_checksums,
    write_dataset,
    write_manifest,
)


def _sample(seed: int, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = np.zeros((512, 512), np.int32)
    for k in range(n):
        y, x = 40 + 120 * k, 30 + 100 * k
        label[y : y + 30, x : x + 20] = k + 1
    image = np.zeros((3, 512, 512), np.float32)
    image[2] = 0.1 + 0.8 * (label > 0) + 0.05 * rng.random((512, 512), dtype=np.float32)
    image[1] = 0.5 * (label > 0)
    return image, label


def _write(root, n_train=2, n_val=1):
    splits = {
        "train": [(*_sample(i), f"img{i}", f"src{i}") for i in range(n_train)],
        "val": [(*_sample(10 + i, n=2), f"val{i}", f"vsrc{i}") for i in range(n_val)],
    }
    return write_dataset(
        root,
        splits,
        name="toy",
        source="hand-made",
        licence="CC0",
        converter="tests",
        converter_version="1",
    )


def test_round_trip(tmp_path):
    manifest = _write(tmp_path / "toy")
    assert manifest["splits"]["train"]["n_images"] == 2
    assert manifest["splits"]["train"]["n_objects"] == 6
    assert manifest["splits"]["val"]["n_objects"] == 2
    data = open_split(tmp_path / "toy", "train")
    assert data.images.shape == (2, 3, 512, 512) and data.images.dtype == np.float32
    assert data.labels.shape == (2, 1, 512, 512) and data.labels.dtype == np.int32
    assert isinstance(data.images, np.memmap)
    image, label = _sample(1)
    np.testing.assert_array_equal(data.images[1], image)
    np.testing.assert_array_equal(data.labels[1, 0], label)
    anns = [a for a in data.coco["annotations"] if a["image_id"] == 0]
    assert [a["bbox"] for a in anns] == [
        [30.0, 40.0, 20.0, 30.0],
        [130.0, 160.0, 20.0, 30.0],
        [230.0, 280.0, 20.0, 30.0],
    ]
    assert all(a["area"] == 600 for a in anns)
    assert data.coco["categories"] == [{"id": 1, "name": "cell"}]
    verify_checksums(tmp_path / "toy")
    # Writing the same content again gives identical bytes (checksums).
    manifest2 = _write(tmp_path / "toy2")
    assert manifest2["splits"]["train"]["sha256"] == manifest["splits"]["train"]["sha256"]


def _corrupt(tmp_path, fname, array):
    root = tmp_path / "toy"
    _write(root)
    np.save(root / "train" / fname, array)
    return root


def test_wrong_dtype(tmp_path):
    root = _corrupt(tmp_path, "images.npy", np.zeros((2, 3, 512, 512), np.float64))
    with pytest.raises(DatasetFormatError, match=r"images\.npy: dtype float64, want float32"):
        open_split(root, "train")


def test_wrong_shape(tmp_path):
    root = _corrupt(tmp_path, "labels.npy", np.zeros((2, 512, 512), np.int32))
    with pytest.raises(DatasetFormatError, match=r"labels\.npy: shape \(2, 512, 512\), want"):
        open_split(root, "train")
    root2 = tmp_path / "b"
    _write(root2)
    np.save(root2 / "train" / "images.npy", np.zeros((2, 3, 256, 256), np.float32))
    with pytest.raises(DatasetFormatError, match=r"want \[N, 3, 512, 512\]"):
        open_split(root2, "train")


def test_value_range_and_nan(tmp_path):
    images = np.stack([_sample(0)[0], _sample(1)[0]])
    images[1, 2, 0, 0] = 1.5
    root = _corrupt(tmp_path, "images.npy", images)
    with pytest.raises(DatasetFormatError, match=r"image 1 has values in .*want \[0, 1\]"):
        open_split(root, "train")
    images[1, 2, 0, 0] = np.nan
    np.save(root / "train" / "images.npy", images)
    with pytest.raises(DatasetFormatError, match="image 1 has NaN"):
        open_split(root, "train")


def test_empty_blue_channel(tmp_path):
    images = np.stack([_sample(0)[0], _sample(1)[0]])
    images[0, 2] = 0
    root = _corrupt(tmp_path, "images.npy", images)
    with pytest.raises(DatasetFormatError, match="image 0 has an empty blue"):
        open_split(root, "train")


def test_labels_disagree_with_coco(tmp_path):
    labels = np.stack([_sample(0)[1], _sample(1)[1]])[:, None]
    labels[1, 0, 400:410, 400:410] = 9  # an object coco.json does not know
    root = _corrupt(tmp_path, "labels.npy", labels)
    with pytest.raises(DatasetFormatError, match=r"image 1 has 4 objects but .*coco\.json has 3"):
        open_split(root, "train")


def test_missing_files(tmp_path):
    root = tmp_path / "toy"
    _write(root)
    (root / "train" / "coco.json").unlink()
    with pytest.raises(DatasetFormatError, match=r"coco\.json: missing file"):
        open_split(root, "train")
    (root / "val" / "labels.npy").unlink()
    with pytest.raises(DatasetFormatError, match=r"labels\.npy: missing file"):
        open_split(root, "val")
    with pytest.raises(DatasetFormatError, match="no split 'test'"):
        open_split(root, "test")
    (root / "manifest.json").unlink()
    with pytest.raises(DatasetFormatError, match="missing manifest"):
        open_split(root, "val")
    with pytest.raises(DatasetFormatError, match="does not exist"):
        open_split(tmp_path / "nowhere", "train")


def test_checksum_mismatch_and_bad_json(tmp_path):
    root = tmp_path / "toy"
    _write(root)
    labels = np.load(root / "train" / "labels.npy")
    labels[0, 0, 0, 0] = 0  # same shape, different bytes
    np.save(root / "train" / "labels.npy", labels)
    with pytest.raises(DatasetFormatError, match=r"labels\.npy: checksum differs"):
        verify_checksums(root)
    (root / "val" / "coco.json").write_text("{broken")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        open_split(root, "val")


def test_writer_rejects_bad_items_and_cleans_up(tmp_path):
    image, label = _sample(0)
    with pytest.raises(DatasetFormatError, match="blue .* channel is empty"):
        with SplitWriter(tmp_path / "d", "train") as w:
            w.add(image, label, "ok")
            bad = image.copy()
            bad[2] = 0
            w.add(bad, label, "bad")
    assert not (tmp_path / "d" / "train" / "images.npy").exists()  # no half-written array
    with pytest.raises(DatasetFormatError, match=r"\(x\): image values"):
        with SplitWriter(tmp_path / "e", "train") as w:
            w.add(image * 2, label, "x")
    with SplitWriter(tmp_path / "f", "train") as w:
        pass
    manifest = write_manifest(
        tmp_path / "f",
        name="f",
        source="",
        licence="",
        converter="",
        converter_version="",
        splits={"train": w.summary},
    )
    assert manifest["splits"]["train"]["n_images"] == 0
    assert open_split(tmp_path / "f", "train").images.shape == (0, 3, 512, 512)
    assert json.loads((tmp_path / "f" / "manifest.json").read_text())["name"] == "f"


def test_a_split_write_that_fails_keeps_the_previous_split(tmp_path):
    from cellsam.data.format import SplitWriter

    def item(value):
        label = np.zeros((512, 512), np.int32)
        label[10:40, 10:40] = 1
        image = np.full((3, 512, 512), value, np.float32)
        return image, label

    with SplitWriter(tmp_path, "train") as writer:
        writer.add(*item(0.25), "first")
    before = {p.name: p.read_bytes() for p in (tmp_path / "train").iterdir()}
    with pytest.raises(RuntimeError, match="stopped"), SplitWriter(tmp_path, "train") as w:
        w.add(*item(0.75), "second")
        raise RuntimeError("stopped")
    after = {p.name: p.read_bytes() for p in (tmp_path / "train").iterdir()}
    assert after == before  # no partial files left, the old arrays intact
    assert float(np.load(tmp_path / "train" / "images.npy").max()) == 0.25
