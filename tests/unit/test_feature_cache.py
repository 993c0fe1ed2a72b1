"""Frozen-trunk feature cache: views, keys that change with every input, atomic builds, and
losses equal to those of the uncached path for the same views, in both stages."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from conf_values import stage_module_args

from cellsam.data.datamodule import CellSplitDataset, collate
from cellsam.data.feature_cache import (
    CachedSplitDataset,
    FeatureStore,
    apply_view,
    build_feature_store,
    remove_dead_builds,
    trunk_fingerprint,
)
from cellsam.data.format import open_split
from cellsam.data.transforms import label_targets, resize_image


def test_views_are_the_eight_dihedral_transforms():
    x = torch.tensor([[1, 2], [3, 4]])
    expected = {
        0: [[1, 2], [3, 4]], 1: [[2, 4], [1, 3]], 2: [[4, 3], [2, 1]], 3: [[3, 1], [4, 2]],
        4: [[2, 1], [4, 3]], 5: [[1, 3], [2, 4]], 6: [[3, 4], [1, 2]], 7: [[4, 2], [3, 1]],
    }
    for view, want in expected.items():
        assert apply_view(x, view).tolist() == want, view
    with pytest.raises(ValueError, match="0..7"):
        apply_view(x, 8)


def _dataset(synthetic_dir, split="train", size=512) -> CellSplitDataset:
    return CellSplitDataset(open_split(synthetic_dir, split), "synthetic", size)


def _store(model, dataset, root, views=(0,), dtype="float32", **kw) -> FeatureStore:
    fp = trunk_fingerprint(model)
    return build_feature_store(model.trunk, dataset, views, root, fingerprint=fp,
                               input_size=model.image_size, dtype=dtype, **kw)


@torch.no_grad()
def test_store_holds_the_trunk_features_of_each_view(synthetic_dir, tiny_model, tmp_path):
    model = tiny_model.eval()
    ds = _dataset(synthetic_dir)
    store = _store(model, ds, tmp_path, views=(0, 1, 6), batch_size=3)
    assert store.features.shape[:2] == (8, 3)
    image = resize_image(torch.from_numpy(ds.data.images[5].copy()), 512)[None]
    for view in (0, 1, 6):
        want = model.trunk(apply_view(image, view))[0]
        torch.testing.assert_close(store.get(5, view), want, rtol=1e-5, atol=1e-5)
    half = _store(model, ds, tmp_path / "half", views=(0,), dtype="float16")
    assert half.features.dtype == np.float16
    err = (half.get(5, 0) - store.get(5, 0)).abs().max() / store.get(5, 0).abs().max()
    assert 0 < err < 1e-3


def test_a_changed_trunk_or_dataset_gets_another_cache(synthetic_dir, tiny_model, tmp_path):
    ds = _dataset(synthetic_dir)
    first = _store(tiny_model, ds, tmp_path)
    assert _store(tiny_model, ds, tmp_path).folder == first.folder  # read back, not rebuilt
    with torch.no_grad():
        tiny_model.sam.image_encoder.blocks[0].mlp.lin1.bias[0] += 1e-3
    second = _store(tiny_model, ds, tmp_path)
    assert second.folder != first.folder
    assert not torch.equal(first.get(0, 0), second.get(0, 0))
    other_items = CellSplitDataset(ds.data, "synthetic", 512, indices=[0, 2, 4])
    assert _store(tiny_model, other_items, tmp_path).folder not in (first.folder, second.folder)
    assert _store(tiny_model, _dataset(synthetic_dir, "val"), tmp_path).folder != second.folder
    with torch.no_grad():  # the neck is not part of the trunk: same cache
        tiny_model.sam.image_encoder.neck[0].weight.mul_(2)
    assert _store(tiny_model, ds, tmp_path).folder == second.folder


def test_an_interrupted_build_leaves_nothing(synthetic_dir, tiny_model, tmp_path):
    ds = _dataset(synthetic_dir)
    calls = []

    def failing(images):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return tiny_model.trunk(images)

    with pytest.raises(KeyboardInterrupt):
        build_feature_store(failing, ds, [0], tmp_path, fingerprint="f", input_size=512,
                            batch_size=2)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="start with 0"):
        build_feature_store(tiny_model.trunk, ds, [1, 0], tmp_path, fingerprint="f",
                            input_size=512)


def test_a_killed_build_is_cleaned_by_the_next(synthetic_dir, tiny_model, tmp_path):
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs
    killed = tmp_path / f".abc.tmp-{host}-{dead.pid}"
    running = tmp_path / f".abc.tmp-{host}-{os.getpid()}"
    elsewhere = tmp_path / f".abc.tmp-other.host-{dead.pid}"
    for folder in (killed, running, elsewhere):
        folder.mkdir()
        (folder / "features.npy").write_bytes(b"partial")
    assert remove_dead_builds(tmp_path) == [killed]
    assert not killed.exists() and running.is_dir() and elsewhere.is_dir()

    running.rename(killed)  # a build is what runs the cleaning
    build_feature_store(tiny_model.trunk, _dataset(synthetic_dir), [0], tmp_path,
                        fingerprint="f", input_size=512, batch_size=2)
    assert not killed.exists() and elsewhere.is_dir()


def _uncached_batch(ds, items, views):
    """What the cached dataset yields, made from images: the view applied to the resized
    image and to the label."""
    out = []
    for i, view in zip(items, views):
        image = apply_view(resize_image(torch.from_numpy(ds.data.images[i].copy()), 512), view)
        label = apply_view(torch.from_numpy(ds.data.labels[i, 0].astype("int64")), view)
        out.append({"image": image.contiguous(), "label": label.contiguous(),
                    "dataset": "synthetic", "index": i, **label_targets(label.contiguous())})
    return collate(out)


def _cached_batch(cached, items, seed):
    torch.manual_seed(seed)
    got = [cached[i] for i in items]
    return collate(got), [g["view"] for g in got]


@pytest.mark.parametrize("stage", ["finder", "sam"])
def test_losses_with_and_without_the_cache_are_equal(stage, synthetic_dir, tiny_model, tmp_path):
    from cellsam.systems.finder_module import FinderModule
    from cellsam.systems.sam_module import SamModule

    if stage == "finder":
        module = FinderModule(tiny_model, **stage_module_args("finder", freeze_trunk=True))
    else:
        module = SamModule(tiny_model, **stage_module_args("sam"))
    module.log = lambda *a, **k: None  # no trainer: the logged values are not under test
    ds = _dataset(synthetic_dir)
    store = _store(tiny_model, ds, tmp_path, views=(0, 3, 4, 7))
    cached = CachedSplitDataset(ds, store, train=True)
    items = [1, 6, 3]
    batch, views = _cached_batch(cached, items, seed=3)
    assert len(set(views)) > 1 and "images" not in batch
    reference = _uncached_batch(ds, items, views)
    for key in ("labels",):
        assert torch.equal(batch[key], reference[key])
    module.train()
    trained = [p for p in module.parameters() if p.requires_grad]

    def loss_and_grads(b):
        module.zero_grad()
        torch.manual_seed(0)
        loss = module.training_step(b, 0)
        loss.backward()  # both paths must train (a frozen trunk must not freeze the rest)
        return loss.detach(), [p.grad.clone() for p in trained if p.grad is not None]

    with_cache, grads_cached = loss_and_grads(batch)
    without, grads = loss_and_grads(reference)
    assert with_cache.item() > 0 and len(grads) == len(grads_cached) > 0
    torch.testing.assert_close(with_cache, without, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_cached, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # validation reads the stored view
    val = CachedSplitDataset(ds, store, train=False)
    assert all(val[i]["view"] == 0 for i in range(len(val)))


def test_finder_freeze_trunk_trains_only_the_finder(tiny_model):
    from cellsam.systems.finder_module import FinderModule

    module = FinderModule(tiny_model, **stage_module_args("finder", freeze_trunk=True))
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [g["name"] for g in groups] == ["finder"]
    assert not any(p.requires_grad for p in tiny_model.part_parameters("trunk"))
    assert all(p.requires_grad for p in tiny_model.part_parameters("finder"))
