"""Add-to-training-set: the dataset it writes validates, a second add of the same image
replaces it, other splits keep their bytes, and a failure anywhere leaves the folder as it
was (file hashes compared)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cellsam.data.format import open_split, read_manifest, verify_checksums
from cellsam.labelling import add_to_training_set, image_hash
from cellsam.labelling import dataset as ds


def sample(seed: int, shape=(300, 400), n=4):
    """A prepared image `[3, H, W]` in [0, 1] and labels with `n` rectangles."""
    rng = np.random.default_rng(seed)
    image = rng.random((3, *shape)).astype(np.float32)
    labels = np.zeros(shape, np.int32)
    for k in range(n):
        y, x = 20 + 60 * k, 30 + 70 * k
        labels[y:y + 30, x:x + 40] = k + 10  # ids need not be 1..N
    return image, labels


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_image_hash_is_data_preps():
    from data_prep.pipeline import image_hash as prep_hash

    image = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    assert image_hash(image) == prep_hash(image)
    assert image_hash(image) != image_hash(image.astype(np.int32))


def test_new_dataset_round_trip_and_replacement(tmp_path):
    out = tmp_path / "corrections"
    image, labels = sample(0)
    h = image_hash(image)
    r = add_to_training_set(out, image, labels, "img", h)
    assert r.names == [f"img-{h[:10]}"] and r.n_objects == 4 and r.replaced is None
    data = open_split(out, "train", validate=True)
    verify_checksums(out)
    assert len(data) == 1 and data.coco["images"][0]["file_name"] == r.names[0]
    # zero-padded to 512, renumbered 1..N in id order
    want = np.zeros((512, 512), np.int32)
    want[:300, :400] = np.searchsorted([0, 10, 11, 12, 13], labels)
    np.testing.assert_array_equal(data.labels[0, 0], want)
    np.testing.assert_array_equal(data.images[0, :, :300, :400], image)
    # the same image again with corrected labels: replaced, not duplicated
    fixed = labels.copy()
    fixed[fixed == 13] = 0
    r = add_to_training_set(out, image, fixed, "img", h)
    assert r.replaced == "train" and r.n_objects == 3
    data = open_split(out, "train", validate=True)
    assert len(data) == 1 and int(data.labels[0].max()) == 3
    # another image: appended
    other, other_labels = sample(1, n=2)
    add_to_training_set(out, other, other_labels, "other", image_hash(other))
    data = open_split(out, "train", validate=True)
    verify_checksums(out)
    assert len(data) == 2 and len(data.coco["annotations"]) == 5
    record = read_manifest(out)["settings"]["labelling"]["images"]
    assert set(record) == {h, image_hash(other)}
    # moved to val: gone from train, train keeps the other image
    add_to_training_set(out, image, fixed, "img", h, split="val")
    assert len(open_split(out, "train")) == 1 and len(open_split(out, "val")) == 1
    verify_checksums(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_large_image_is_tiled_like_data_prep(tmp_path):
    image, labels = sample(2, shape=(600, 700), n=6)
    r = add_to_training_set(tmp_path / "d", image, labels, "big", image_hash(image))
    # 600 x 700 -> starts 0, 88 and 0, 188: four tiles
    suffixes = sorted(n.rsplit("-", 1)[1][10:] for n in r.names)
    assert suffixes == ["_y0_x0", "_y0_x188", "_y88_x0", "_y88_x188"]
    assert len(open_split(tmp_path / "d", "train", validate=True)) == 4


def test_adding_to_a_converted_dataset_keeps_its_other_splits(tmp_path, synthetic_dir):
    out = tmp_path / "synthetic"
    shutil.copytree(synthetic_dir, out)
    before = tree_hashes(out)
    manifest = read_manifest(out)
    image, labels = sample(3)
    add_to_training_set(out, image, labels, "mine", image_hash(image))
    after = tree_hashes(out)
    for split in ("val", "test"):
        for f in ("images.npy", "labels.npy", "coco.json"):
            assert after[f"{split}/{f}"] == before[f"{split}/{f}"]
    new = read_manifest(out)
    assert new["name"] == manifest["name"] and new["splits"]["val"] == manifest["splits"]["val"]
    assert new["splits"]["train"]["n_images"] == manifest["splits"]["train"]["n_images"] + 1
    assert "labelling:mine" in new["splits"]["train"]["sources"]
    data = open_split(out, "train", validate=True)
    verify_checksums(out)
    old = open_split(synthetic_dir, "train", validate=False)
    np.testing.assert_array_equal(data.images[:len(old)], old.images)  # old items, in order


@pytest.mark.parametrize("where", ["writer", "manifest", "validation", "swap"])
def test_a_failure_leaves_the_dataset_unchanged(tmp_path, monkeypatch, where):
    out = tmp_path / "d"
    for seed in (4, 5):
        image, labels = sample(seed)
        add_to_training_set(out, image, labels, f"s{seed}", image_hash(image))
    before = tree_hashes(out)
    entries = sorted(p.name for p in tmp_path.iterdir())

    class Boom(RuntimeError):
        pass

    def boom(*a, **k):
        raise Boom(where)

    if where == "writer":  # mid-stream: after the first old item was copied
        real_add = ds.SplitWriter.add
        count = [0]

        def add(self, *a, **k):
            count[0] += 1
            if count[0] == 2:
                raise Boom(where)
            return real_add(self, *a, **k)

        monkeypatch.setattr(ds.SplitWriter, "add", add)
    elif where == "manifest":
        monkeypatch.setattr(ds, "write_manifest", boom)
    elif where == "validation":
        monkeypatch.setattr(ds, "verify_checksums", boom)
    else:  # the new folder cannot be renamed in: the old one is put back
        real_rename = os.rename

        def rename(src, dst):
            if ".partial" in str(src):
                raise Boom(where)
            return real_rename(src, dst)

        monkeypatch.setattr(ds.os, "rename", rename)
    image, labels = sample(4)  # replaces s4
    with pytest.raises(Boom):
        add_to_training_set(out, image, np.where(labels == 13, 0, labels), "s4",
                            image_hash(image))
    assert tree_hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == entries
    monkeypatch.undo()
    open_split(out, "train", validate=True)
    verify_checksums(out)


def test_nothing_to_add_writes_nothing(tmp_path):
    image, labels = sample(6)
    with pytest.raises(ValueError, match="no labelled cell"):
        add_to_training_set(tmp_path / "d", image, labels * 0, "empty", image_hash(image))
    assert not (tmp_path / "d").exists()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a dataset"):
        add_to_training_set(tmp_path / "junk", image, labels, "x", image_hash(image))
    assert [p.name for p in (tmp_path / "junk").iterdir()] == ["notes.txt"]
