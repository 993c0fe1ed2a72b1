"""Full-pipeline segmentation metrics during validation and test (a Lightning Callback).

Each validation/test batch goes through the same path as `eval.py`: CellFinder boxes ->
SAM decoding -> post-processing -> one label image per image (`CellSAMPredictor.
predict_batch` on the model the LightningModule holds, `pl_module.model`). Per image the
callback keeps a small record (`cellsam.metrics.report.image_record`); at epoch end the
records of all ranks are gathered once (`gather_records`, which drops the repeats the
distributed sampler pads with), and every rank computes the same numbers from the same
records, so they are logged without a further sync and equal a single-process run exactly.

Logged keys: `val/<dataset>/<metric>` and `val/all/<metric>` (`test/...` under
`trainer.test`), with the metric names of the results.json schema (`f1_50_mean`,
`f1_50_pooled`, `precision_50`, `recall_50`, `deepcell_f1_60`, ..., `coco_map`, ...).

The full pipeline is slower than the stage's own validation, so it runs every
`every_n_epochs` validation epochs (and on the last one; null: never during training, only
under `trainer.test`), COCO on every `coco_every_n_epochs`-th of the epochs it runs. Only
what was computed on a validation is logged: nothing is repeated from an earlier epoch, so
a checkpoint monitor on one of these keys needs them on every validation (the defaults).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback

from cellsam.inference.predictor import CellSAMPredictor
from cellsam.inference.settings import InferenceSettings, resolve_settings
from cellsam.metrics.report import image_record, summarize
from cellsam.utils.distributed import gather_records

log = logging.getLogger(__name__)


def batch_records(predictor: CellSAMPredictor, batch: Mapping[str, Any], with_coco: bool
                  ) -> list[dict[str, Any]]:
    """Predict a data-module batch and return one `image_record` per image.

    batch: `images` `[B, 3, S, S]` in [0, 1] (already normalised by the converter, so no
    preprocessing here) or cached trunk `features`, `labels` `[B, H, W]` int64 at stored
    resolution, `dataset` `[B]` names, `index` `[B]`. Predictions are made at the labels'
    resolution.
    """
    labels = batch["labels"]
    hw = (int(labels.shape[-2]), int(labels.shape[-1]))
    preds = predictor.predict_batch(batch.get("images"), size=hw, features=batch.get("features"))
    labels_np = labels.detach().cpu().numpy()
    index = np.asarray(batch["index"].cpu() if hasattr(batch["index"], "cpu") else batch["index"])
    return [
        image_record(batch["dataset"][i], int(index[i]), labels_np[i], p.labels, p.scores,
                     with_coco)
        for i, p in enumerate(preds)
    ]


def reduce_records(records: list[dict[str, Any]], split: str, with_coco: bool,
                   order: list[str] | None = None, max_dets: int = 10000) -> dict[str, float]:
    """Gather every rank's records (each image once) and summarise them into flat
    `{"<split>/<dataset>/<metric>": value}`; a collective call under DDP."""
    gathered = gather_records(records)
    results = summarize(gathered, coco=with_coco, order=order, max_dets=max_dets)
    return {f"{split}/{name}/{key}": float(value)
            for name, metrics in results.items() for key, value in metrics.items()}


class SegmentationMetrics(Callback):
    """Segmentation metrics of the whole inference pipeline per dataset (see module doc).

    Args:
        every_n_epochs: validation epochs with metrics: epoch % n == 0, and the last epoch;
            None: none during training (test only).
        coco: compute COCO mask/box mAP (the slowest part) at all.
        coco_every_n_epochs: COCO on the epochs with metrics whose epoch % n == 0 (and the
            last); the other epochs log no COCO keys.
        on_sanity_check: also run during Lightning's sanity validation (off: untrained).
        inference: `InferenceSettings` overrides on top of the run config's `inference`
            block (e.g. `{max_detections: 500}` to bound early-training cost); a `preset`
            key starts from that preset instead.
        max_dets: COCO detections kept per image.
        prog_bar: metric shown on the progress bar as `val/all/<prog_bar>` (None: none).
    """

    def __init__(self, every_n_epochs: int | None = 1, coco: bool = True,
                 coco_every_n_epochs: int = 1,
                 on_sanity_check: bool = False, inference: Mapping[str, Any] | None = None,
                 max_dets: int = 10000, prog_bar: str | None = "f1_50_mean") -> None:
        super().__init__()
        for name, value in (("every_n_epochs", every_n_epochs),
                            ("coco_every_n_epochs", coco_every_n_epochs)):
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1 (or null for every_n_epochs), got {value}")
        self.every_n_epochs = None if every_n_epochs is None else int(every_n_epochs)
        self.coco = bool(coco)
        self.coco_every_n_epochs = int(coco_every_n_epochs)
        self.on_sanity_check = bool(on_sanity_check)
        self.inference = dict(inference or {})
        self.max_dets = int(max_dets)
        self.prog_bar = prog_bar
        self._records: list[dict[str, Any]] = []
        self._active = False
        self._with_coco = False
        self._predictor: CellSAMPredictor | None = None

    # -- pieces (used by the hooks; public so tests can drive them without a Trainer) ---------
    def settings(self, pl_module: L.LightningModule) -> InferenceSettings:
        """`resolve_settings` with the run config's inference block in the checkpoint's place
        (it is what the run's checkpoints will carry) and this callback's `inference` in
        the config's place, so `eval.py` on a checkpoint of this run with the same block gets
        the same settings."""
        base = pl_module.inference_settings() if hasattr(pl_module, "inference_settings") else {}
        return resolve_settings(checkpoint=base, config=self.inference)

    def make_predictor(self, trainer: L.Trainer, pl_module: L.LightningModule
                       ) -> CellSAMPredictor:
        # The hooks run outside the precision plugin's autocast, so ask for it explicitly.
        bf16 = str(getattr(trainer, "precision", "")).startswith("bf16")
        cls = CellSAMPredictor
        if getattr(pl_module, "stage", None) == "sac":
            from cellsam.inference.sac_predictor import SACPredictor

            cls = SACPredictor
        return cls(pl_module.model, self.settings(pl_module), device=pl_module.device,
                   bf16=bf16)

    def _is_last_epoch(self, trainer: L.Trainer) -> bool:
        max_epochs = getattr(trainer, "max_epochs", None)
        return bool(max_epochs and max_epochs > 0 and trainer.current_epoch + 1 >= max_epochs)

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        epoch = int(trainer.current_epoch)
        last = self._is_last_epoch(trainer)
        if split == "test":
            self._active, self._with_coco = True, self.coco
        elif trainer.sanity_checking:
            self._active, self._with_coco = self.on_sanity_check, self.coco
        elif self.every_n_epochs is None:
            self._active = self._with_coco = False
        else:
            self._active = epoch % self.every_n_epochs == 0 or last
            self._with_coco = self.coco and (epoch % self.coco_every_n_epochs == 0 or last)
        self._records = []
        self._predictor = self.make_predictor(trainer, pl_module) if self._active else None

    def _collect(self, batch: Mapping[str, Any]) -> None:
        if self._active and self._predictor is not None:
            self._records.extend(batch_records(self._predictor, batch, self._with_coco))

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        values: dict[str, float] = {}
        if self._active:
            dm = getattr(trainer, "datamodule", None)
            order = list(getattr(dm, "names", []) or [])
            values = reduce_records(self._records, split, self._with_coco, order, self.max_dets)
            if not self._with_coco:  # not computed on this epoch: not logged
                values = {k: v for k, v in values.items() if "/coco_" not in k}
        self._records, self._predictor = [], None
        self._active = False
        # Every rank computed these from the same gathered records: no sync needed.
        prog = f"{split}/all/{self.prog_bar}" if self.prog_bar else None
        for key, value in values.items():
            pl_module.log(key, value, prog_bar=key == prog, sync_dist=False)

    # -- Lightning hooks ------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule
                                  ) -> None:
        self._start(trainer, pl_module, "val")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._collect(batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule
                                ) -> None:
        self._finish(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, "test")

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                          outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._collect(batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "test")

