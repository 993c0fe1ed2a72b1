"""LightningDataModule over one or several datasets in the project format.

Training draws from the union of the datasets' train splits (optionally weighted per
dataset); validation and test have one dataloader per dataset so metrics carry the
dataset's name. Each item is resized to the model's input size; labels stay at the stored
resolution so metrics compare against the labels as stored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from cellsam.data.format import SplitData, open_split, read_manifest
from cellsam.data.samplers import WeightedSampler, shuffle_sampler
from cellsam.data.transforms import AugmentConfig, augment, label_targets, resize_image

try:  # a train loader that Lightning can checkpoint mid-epoch (exact resume of the position)
    from torchdata.stateful_dataloader import StatefulDataLoader as TrainLoader
except ImportError:  # pragma: no cover - torchdata missing: resumes restart the epoch's order
    TrainLoader = DataLoader

log = logging.getLogger(__name__)


DATASET_KEYS = frozenset({"path", "weight", "generate"})


class CellSplitDataset(Dataset):
    """Items of one split: `image` `[3, S, S]`, `label` `[H, W]` int64, targets, name, index."""

    def __init__(
        self,
        data: SplitData,
        name: str,
        input_size: int,
        augment_cfg: AugmentConfig | None = None,
        indices: list[int] | None = None,
    ) -> None:
        self.data, self.name, self.input_size, self.augment_cfg = (
            data,
            name,
            input_size,
            augment_cfg,
        )
        self.indices = list(range(len(data))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        image = torch.from_numpy(self.data.images[index].copy())
        label = torch.from_numpy(self.data.labels[index, 0].astype("int64"))
        if self.augment_cfg is not None:
            image, label = augment(image, label, self.augment_cfg, self.input_size)
        else:
            image = resize_image(image, self.input_size)
        return {
            "image": image,
            "label": label,
            "dataset": self.name,
            "index": index,
            **label_targets(label),
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images `[B, 3, S, S]` (or, from a feature cache, trunk features `features`
    `[B, C, h, w]`) and labels `[B, H, W]`; per-image targets stay a list."""
    if "features" in items[0]:
        inputs = {"features": torch.stack([it["features"] for it in items])}
    else:
        inputs = {"images": torch.stack([it["image"] for it in items])}
    return {
        **inputs,
        "labels": torch.stack([it["label"] for it in items]),
        "targets": [
            {"boxes": it["boxes"], "boxes_xyxy": it["boxes_xyxy"], "ids": it["ids"]} for it in items
        ],
        "dataset": [it["dataset"] for it in items],
        "index": torch.tensor([it["index"] for it in items]),
    }


class CellDataModule(L.LightningDataModule):
    """Datasets from config: `datasets` maps name -> {path, weight, [generate]}.

    An entry with `generate` (synthetic data) is generated into `path` on first use.
    """

    def __init__(
        self,
        datasets: Mapping[str, Mapping[str, Any]],
        batch_size: int = 4,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        validate_on_open: bool = True,
        max_objects: int | None = None,
        augment: Mapping[str, Any] | None = None,
        input_size: int = 1024,
    ) -> None:
        super().__init__()
        if not datasets:
            raise ValueError("data.datasets is empty: choose data=<name> or list datasets")
        for name, entry in datasets.items():
            keys = set(entry) if isinstance(entry, Mapping) else None
            if keys is None or "path" not in keys or keys - DATASET_KEYS:
                raise ValueError(
                    f"data.datasets.{name}: expected the keys {sorted(DATASET_KEYS)} with "
                    f"`path` required, got {sorted(keys) if keys is not None else entry!r} "
                    f"(e.g. +data.datasets.{name}.path=/path/to/dataset)")
        self.datasets = {k: dict(v) for k, v in datasets.items()}
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.validate_on_open, self.max_objects = validate_on_open, max_objects
        # None: no augmentation; the values of a run come from `conf/data/base.yaml`.
        self.augment_cfg = None if augment is None else AugmentConfig.from_config(dict(augment))
        self.input_size = input_size
        self.splits: dict[str, dict[str, CellSplitDataset]] = {}

    @property
    def names(self) -> list[str]:
        return list(self.datasets)

    def prepare_data(self) -> None:
        for entry in self.datasets.values():
            if entry.get("generate"):
                from cellsam.data.synthetic import ensure_synthetic

                gen = dict(entry["generate"])
                gen["cells"] = tuple(gen.get("cells", (8, 48)))
                ensure_synthetic(entry["path"], **gen)

    def _open(self, split: str, train: bool) -> dict[str, CellSplitDataset]:
        out = {}
        for name, entry in self.datasets.items():
            path = Path(entry["path"])
            if split not in read_manifest(path).get("splits", {}):
                continue  # e.g. LIVECell has only a test split
            data = open_split(path, split, validate=self.validate_on_open)
            indices = None
            if train and self.max_objects:
                counts = _objects_per_image(data)
                indices = [i for i, c in enumerate(counts) if c <= self.max_objects]
                if len(indices) < len(data):
                    log.info(
                        "%s/%s: %d images over max_objects=%d left out",
                        name,
                        split,
                        len(data) - len(indices),
                        self.max_objects,
                    )
            out[name] = CellSplitDataset(
                data, name, self.input_size, self.augment_cfg if train else None, indices
            )
        return out

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.splits["train"] = self._open("train", train=True)
            self.splits["val"] = self._open("val", train=False)
            if not self.splits["val"]:
                have = "; ".join(
                    f"{n} has {sorted(read_manifest(Path(e['path'])).get('splits', {}))}"
                    for n, e in self.datasets.items())
                raise ValueError(
                    f"no dataset has a val split ({have}): training monitors a validation "
                    "metric to choose its checkpoint, so add a val split (the converters "
                    "make one from 2 images up) or a dataset that has one")
        if stage in (None, "validate"):
            self.splits["val"] = self._open("val", train=False)
        if stage in (None, "test", "predict"):
            self.splits["test"] = self._open("test", train=False)

    def use_feature_cache(self, split: str, datasets: Mapping[str, Dataset]) -> None:
        """Replace a split's datasets (by name) with cached-feature ones
        (`cellsam.data.feature_cache.CachedSplitDataset`, set by the `FeatureCache` callback)."""
        unknown = sorted(set(datasets) - set(self.splits.get(split, {})))
        if unknown:
            raise ValueError(f"feature cache for {unknown}: no such {split} datasets")
        self.splits[split].update(datasets)

    def split_datasets(self, split: str) -> dict[str, CellSplitDataset]:
        if split not in self.splits:
            self.splits[split] = self._open(split, train=False)
        return self.splits[split]

    def _loader(self, dataset: Dataset, shuffle: bool, sampler=None, cls=DataLoader,
                generator: torch.Generator | None = None) -> DataLoader:
        return cls(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        parts = self.splits["train"]
        if not parts:
            raise ValueError(f"no dataset among {self.names} has a train split")
        union = ConcatDataset(list(parts.values()))
        weights = [float(self.datasets[n].get("weight", 1.0)) for n in parts]
        # Order from (seed, epoch) only, kept out of the global random numbers that the
        # augmentations use: exact resume mid-epoch and at epoch starts, also under DDP (see
        # cellsam/data/samplers.py). The loader's generator seeds the workers.
        seed = torch.initial_seed() % 2**31  # the run's seed (seed_everything)
        if len(set(weights)) > 1:  # per-dataset weights: each item drawn with its set's weight
            per_item = torch.cat(
                [torch.full((len(d),), w / len(d)) for d, w in zip(parts.values(), weights)]
            )
            sampler = WeightedSampler(union, per_item, seed)
        else:
            sampler = shuffle_sampler(union, seed)
        return self._loader(union, shuffle=False, sampler=sampler, cls=TrainLoader,
                            generator=torch.Generator().manual_seed(seed))

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, shuffle=False) for d in self.split_datasets("val").values()]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, shuffle=False) for d in self.split_datasets("test").values()]


def _objects_per_image(data: SplitData) -> list[int]:
    counts = [0] * len(data)
    for ann in data.coco.get("annotations", []):
        counts[ann["image_id"]] += 1
    return counts
