"""Frozen-trunk feature caching for either stage (`cellsam.data.feature_cache`).

At fit start (the model already on its device) the trunk's features of every train and val
item are computed once, in the cached views, or read back from a previous run's cache; the
data module's datasets are then swapped for ones that yield `features`, which the stage's
LightningModule feeds past the trunk. Refuses a trunk that trains: its features would go
stale after the first step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L

from cellsam.data.feature_cache import (
    CachedSplitDataset,
    FeatureStore,
    build_feature_store,
    trunk_fingerprint,
)

log = logging.getLogger(__name__)


class FeatureCache(L.Callback):
    """`views`: dihedral views cached per training item (0 = as stored, 1-3 rotations, 4-7
    flipped; see `apply_view`); `dtype`: float16 (half the disk) or float32."""

    def __init__(self, cache_dir: str, views: Sequence[int] = (0,), dtype: str = "float16",
                 batch_size: int = 4) -> None:
        self.cache_dir = Path(cache_dir)
        self.views, self.dtype, self.batch_size = list(views), dtype, batch_size
        self.build_seconds: dict[str, float] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        if any(p.requires_grad for p in model.part_parameters("trunk")):
            raise ValueError(
                "callbacks.feature_cache needs a frozen trunk (its features would change "
                "as it trains): set stage.module.freeze_trunk=true in stage 1, or leave "
                "`trunk` out of stage.module.trainable in stage 2")
        datamodule = trainer.datamodule
        separate = model.finder_encoder is not None and pl_module.stage == "finder"
        fingerprint = f"{trunk_fingerprint(model)}:{'finder_encoder' if separate else 'trunk'}"
        was_training = pl_module.training
        pl_module.eval()
        try:
            for split, train in (("train", True), ("val", False)):
                datasets = datamodule.split_datasets(split)
                stores = {name: self._store(trainer, pl_module, ds, train, fingerprint)
                          for name, ds in datasets.items()}
                datamodule.use_feature_cache(split, {
                    name: CachedSplitDataset(datasets[name], store, train)
                    for name, store in stores.items()})
        finally:
            pl_module.train(was_training)

    def _store(self, trainer: L.Trainer, pl_module: L.LightningModule, dataset, train: bool,
               fingerprint: str) -> FeatureStore:
        views = self.views if train else [0]

        def build() -> FeatureStore:
            return build_feature_store(
                pl_module.trunk_features, dataset, views, self.cache_dir,
                fingerprint=fingerprint, input_size=pl_module.model.image_size,
                dtype=self.dtype, batch_size=self.batch_size, device=pl_module.device)

        start = time.perf_counter()
        # Rank 0 computes (or finds) the cache; the other ranks then open the same folder.
        store = build() if trainer.is_global_zero else None
        trainer.strategy.barrier("feature_cache")
        if store is None:
            store = build()
        seconds = time.perf_counter() - start
        self.build_seconds[f"{dataset.name}/{'train' if train else 'val'}"] = seconds
        log.info("feature cache %s (%s, %d items, views %s): %.1f s", store.folder,
                 dataset.name, len(store), views, seconds)
        return store

