"""DataModule and augmentation: labels, boxes and image stay consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conf_values import NO_AUGMENT, augment_block

from cellsam.data.datamodule import CellDataModule, collate
from cellsam.data.format import write_dataset
from cellsam.data.transforms import AugmentConfig, augment, label_targets, zoom_crop

GEOMETRIC = AugmentConfig.from_config(augment_block(
    hflip=0.5, vflip=0.5, rot90=True, zoom_p=0.0, gamma_p=0.0, noise_p=0.0, blur_p=0.0))


def _hand_made() -> tuple[torch.Tensor, torch.Tensor]:
    """Three rectangles; the green channel encodes each pixel's object id (id / 10)."""
    label = torch.zeros(64, 64, dtype=torch.long)
    label[4:10, 6:20] = 1  # 6 x 14, top left: asymmetric so every flip/rotation differs
    label[30:50, 40:44] = 2
    label[50:60, 2:30] = 3
    image = torch.zeros(3, 64, 64)
    image[1] = label.float() / 10
    image[2] = 0.05 + (label > 0).float() * 0.9
    return image, label


def test_label_targets_hand_computed():
    _, label = _hand_made()
    t = label_targets(label)
    assert t["ids"].tolist() == [1, 2, 3]
    assert t["boxes_xyxy"].tolist() == [[6, 4, 20, 10], [40, 30, 44, 50], [2, 50, 30, 60]]
    # cx, cy, w, h normalised: object 1 is x 6..20, y 4..10 in a 64 px image.
    assert torch.allclose(t["boxes"][0], torch.tensor([13 / 64, 7 / 64, 14 / 64, 6 / 64]))
    sliver = torch.zeros(16, 16, dtype=torch.long)
    sliver[3, 2:9] = 5  # 1 px tall: left out of the targets
    assert label_targets(sliver)["ids"].numel() == 0


def test_geometric_augmentation_keeps_image_label_and_boxes_consistent():
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        image, label = _hand_made()
        img, lab = augment(image, label, GEOMETRIC, 64)
        # the encoded id in the image equals the label everywhere
        assert torch.equal((img[1] * 10).round().long(), lab)
        t = label_targets(lab)
        for obj, (x0, y0, x1, y1) in zip(t["ids"].tolist(), t["boxes_xyxy"].long().tolist()):
            ys, xs = torch.nonzero(lab == obj, as_tuple=True)
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert int((lab == obj).sum()) == {1: 84, 2: 80, 3: 280}[obj]  # areas preserved
        seen.add(tuple(t["boxes_xyxy"][0].long().tolist()))
    assert len(seen) == 8  # all 8 flip/rotation combinations of object 1 occurred


def test_zoom_crop_moves_label_with_image():
    torch.manual_seed(3)
    image, label = _hand_made()
    for factor in (0.5, 2.0):
        img, lab = zoom_crop(image, label, factor)
        assert img.shape == image.shape and lab.shape == label.shape
        inner = lab > 0
        # away from object borders the bilinear image agrees with the nearest-neighbour label
        eroded = inner.clone()
        for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            eroded &= torch.roll(lab, (dy, dx), (0, 1)) == lab
        assert eroded.any()
        assert torch.equal((img[1][eroded] * 10).round().long(), lab[eroded])
    img, lab = zoom_crop(image, label, 0.5)
    assert int((lab == 3).sum()) == 70  # 28 x 10 object at half size: 14 x 5


def test_photometric_keeps_blank_channel_blank_and_range():
    torch.manual_seed(1)
    image, label = _hand_made()
    image[0] = 0
    cfg = AugmentConfig.from_config(augment_block(hflip=0, vflip=0, rot90=False, zoom_p=0,
                                                  gamma_p=1, noise_p=1, blur_p=1))
    img, lab = augment(image, label, cfg, 64)
    assert torch.equal(lab, label)
    assert img[0].abs().max() == 0
    assert img.min() >= 0 and img.max() <= 1
    assert not torch.equal(img[2], image[2])


@pytest.fixture()
def two_datasets(tmp_path):
    def sample(k, n):
        label = np.zeros((512, 512), np.int32)
        for i in range(n):
            label[20 + 60 * i : 60 + 60 * i, 30 + 40 * k : 60 + 40 * k] = i + 1
        image = np.zeros((3, 512, 512), np.float32)
        image[2] = 0.1 + 0.8 * (label > 0)
        return image, label, f"im{k}", f"im{k}"

    for name, n in (("a", 2), ("b", 4)):
        write_dataset(
            tmp_path / name,
            {"train": [sample(k, n) for k in range(3)], "val": [sample(k, n) for k in range(2)]},
            name=name,
            source="",
            licence="",
            converter="t",
            converter_version="0",
        )
    return tmp_path


def test_datamodule_union_per_dataset_loaders_and_resizing(two_datasets):
    dm = CellDataModule(
        {
            "a": {"path": str(two_datasets / "a")},
            "b": {"path": str(two_datasets / "b"), "weight": 3.0},
        },
        batch_size=2,
        num_workers=0,
        augment=NO_AUGMENT,
        input_size=256,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader.dataset) == 6
    assert isinstance(loader.sampler, torch.utils.data.WeightedRandomSampler)
    # dataset b has weight 3: its items get 3x the sampling probability of a's
    w = loader.sampler.weights
    assert torch.allclose((w[3:] / w[:3]).float(), torch.full((3,), 3.0))
    batch = next(iter(loader))
    assert batch["images"].shape == (2, 3, 256, 256)
    assert batch["labels"].shape == (2, 512, 512)
    vals = dm.val_dataloader()
    assert len(vals) == 2
    vb = next(iter(vals[1]))
    assert vb["dataset"] == ["b", "b"] and vb["index"].tolist() == [0, 1]
    assert [len(t["boxes"]) for t in vb["targets"]] == [4, 4]
    assert torch.allclose(
        vb["targets"][0]["boxes"][0], torch.tensor([45 / 512, 40 / 512, 30 / 512, 40 / 512])
    )


def test_collate_variable_counts():
    items = []
    for n in (0, 3):
        label = torch.zeros(32, 32, dtype=torch.long)
        for i in range(n):
            label[2 + 8 * i : 6 + 8 * i, 4:9] = i + 1
        items.append(
            {
                "image": torch.zeros(3, 32, 32),
                "label": label,
                "dataset": "x",
                "index": n,
                **label_targets(label),
            }
        )
    batch = collate(items)
    assert [len(t["boxes"]) for t in batch["targets"]] == [0, 3]
    assert batch["index"].tolist() == [0, 3]


@pytest.mark.parametrize("input_size", [256, 1024])
def test_photometric_runs_at_the_smaller_of_stored_and_input_size(
    two_datasets, monkeypatch, input_size
):
    import cellsam.data.transforms as transforms

    seen = []
    original = transforms.photometric

    def spy(image, cfg):
        seen.append(tuple(image.shape))
        return original(image, cfg)

    monkeypatch.setattr(transforms, "photometric", spy)
    dm = CellDataModule(
        {"a": {"path": str(two_datasets / "a")}},
        batch_size=1,
        num_workers=0,
        augment=augment_block(gamma_p=1.0, noise_p=1.0, blur_p=0.0),
        input_size=input_size,
    )
    dm.setup("fit")
    item = dm.train_dataloader().dataset[0]
    stored = 512
    side = min(stored, input_size)
    assert seen == [(3, side, side)]
    assert item["image"].shape == (3, input_size, input_size)
    assert item["label"].shape == (stored, stored)
    assert item["image"][0].abs().max() == 0  # blank channel stays blank through both orders
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert [len(b) for b in (item["boxes"], item["ids"])] == [2, 2]


def test_misspelled_dataset_key_and_missing_val_split_are_named(tmp_path, two_datasets):
    with pytest.raises(ValueError, match=r"data\.datasets\.x: expected the keys .*got \['pth'\]"):
        CellDataModule({"x": {"pth": "/data/x"}})
    only_train = tmp_path / "one"
    label = np.zeros((512, 512), np.int32)
    label[5:20, 5:20] = 1
    image = np.zeros((3, 512, 512), np.float32)
    image[2] = 0.5
    write_dataset(only_train, {"train": [(image, label, "a", "a")]}, name="one", source="",
                  licence="", converter="t", converter_version="0")
    dm = CellDataModule({"one": {"path": str(only_train)}}, num_workers=0, input_size=64)
    with pytest.raises(ValueError, match=r"no dataset has a val split \(one has \['train'\]\)"):
        dm.setup("fit")
