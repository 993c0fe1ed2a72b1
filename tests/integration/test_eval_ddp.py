"""The metrics callback under DDP gives exactly the numbers of one process.

Two CPU processes (gloo, torch.multiprocessing spawn) each validate their shard of two
datasets of 5 and 3 images through `DistributedSampler`, which pads each to 6 and 4 with
repeated images; the callback's hooks record per-image metrics, gather them once and
reduce. The logged values must equal a single-process run bit for bit, and no image may
count twice. A deterministic threshold segmenter stands in for the model (what is under
test is the record -> gather -> reduce path, not the network).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy import ndimage
from torch.utils.data import DataLoader, DistributedSampler

from cellsam.callbacks.segmentation_metrics import SegmentationMetrics
from cellsam.data.datamodule import CellSplitDataset, collate
from cellsam.data.format import open_split

SIZES = {"alpha": 5, "beta": 3}  # neither divides by the world size 2


class ThresholdPredictor:
    """`predict_batch` stand-in: connected components of the whole-cell channel > 0.35,
    scored by their mean intensity (deterministic, imperfect: merges touching cells)."""

    def predict_batch(self, inputs: torch.Tensor, size: tuple[int, int],
                      features: torch.Tensor | None = None) -> list[Any]:
        assert features is None
        out = []
        for image in inputs.cpu().numpy():
            assert image.shape[-2:] == tuple(size)
            channel = image[2]
            labels, n = ndimage.label(channel > 0.35)
            scores = ndimage.mean(channel, labels, np.arange(1, n + 1)) if n else np.zeros(0)
            out.append(SimpleNamespace(labels=labels, scores=np.asarray(scores)))
        return out


class StubMetrics(SegmentationMetrics):
    """The callback with the stand-in predictor; notes each epoch's (computed, COCO)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.schedule: list[tuple[bool, bool]] = []

    def make_predictor(self, trainer, pl_module):
        return ThresholdPredictor()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.schedule.append((self._active, self._with_coco and self._active))
        super().on_validation_epoch_end(trainer, pl_module)


class LogSink:
    """The part of a LightningModule the callback uses: `log`."""

    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log(self, key: str, value: float, **kwargs: Any) -> None:
        assert kwargs.get("sync_dist") is False
        self.logged[key] = float(value)


def fake_trainer(epoch: int = 0, max_epochs: int = 1) -> SimpleNamespace:
    return SimpleNamespace(current_epoch=epoch, max_epochs=max_epochs, sanity_checking=False,
                           precision="32-true", datamodule=SimpleNamespace(names=list(SIZES)))


def run_validation(data_dir: str, rank: int, world: int, callback: SegmentationMetrics,
                   trainer: SimpleNamespace, names: tuple[str, ...] = tuple(SIZES),
                   stage: str = "validation") -> tuple[dict[str, float], list[tuple[str, int]]]:
    """One validation (or test) epoch through the callback's hooks; returns the logs and
    the (dataset, index) pairs this rank saw."""
    module = LogSink()
    seen = []
    getattr(callback, f"on_{stage}_epoch_start")(trainer, module)
    for name in names:
        ds = CellSplitDataset(open_split(Path(data_dir) / name, "val"), name, 512)
        sampler = DistributedSampler(ds, world, rank, shuffle=False) if world > 1 else None
        for i, batch in enumerate(DataLoader(ds, batch_size=2, sampler=sampler,
                                             collate_fn=collate)):
            seen += [(name, int(k)) for k in batch["index"]]
            getattr(callback, f"on_{stage}_batch_end")(trainer, module, None, batch, i, 0)
    getattr(callback, f"on_{stage}_epoch_end")(trainer, module)
    return module.logged, seen


def _worker(rank: int, world: int, data_dir: str, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        logged, seen = run_validation(data_dir, rank, world, StubMetrics(), fake_trainer())
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"logged": logged, "seen": seen}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from cellsam.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("ddp_data")
    for seed, (name, n) in enumerate(SIZES.items()):
        generate_dataset(root / name, {"val": n}, cells=(4, 14), seed=seed, progress=False)
    return root


def _same(a: float, b: float) -> bool:
    return a == b or (np.isnan(a) and np.isnan(b))


def test_two_process_metrics_equal_one_process(data_dir, tmp_path):
    single, seen = run_validation(str(data_dir), 0, 1, StubMetrics(), fake_trainer())
    assert len(seen) == sum(SIZES.values())
    mp.spawn(_worker, args=(2, str(data_dir), _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    seen_ddp = [tuple(x) for r in ranks for x in r["seen"]]
    assert len(seen_ddp) == 6 + 4 and len(set(seen_ddp)) == 5 + 3  # the sampler padded
    for name, n in SIZES.items():
        assert single[f"val/{name}/n_images"] == n
    assert single["val/all/n_images"] == 8
    assert single["val/all/n_cells"] > 0 and 0 < single["val/all/f1_50_mean"] < 1
    assert not np.isnan(single["val/all/coco_map"])
    for r in ranks:
        assert r["logged"].keys() == single.keys()
        differ = [k for k in single if not _same(r["logged"][k], single[k])]
        assert not differ, f"DDP differs from one process on {differ}"


def test_schedule_logs_only_what_was_computed(data_dir):
    """Metrics every 2nd epoch (and the last), COCO every 4th; nothing is logged again from
    an earlier epoch; every_n_epochs=None runs under trainer.test only."""
    cb = StubMetrics(every_n_epochs=2, coco_every_n_epochs=4)
    logs = [run_validation(str(data_dir), 0, 1, cb, fake_trainer(e, 4), ("beta",))[0]
            for e in range(4)]
    assert cb.schedule == [(True, True), (False, False), (True, False), (True, True)]
    assert not np.isnan(logs[0]["val/all/coco_map"])
    assert logs[1] == {}  # epoch 1: not computed, nothing logged
    coco = {k for k in logs[0] if "/coco_" in k}
    assert coco and not coco & logs[2].keys()  # epoch 2: computed without COCO
    assert logs[2] == {k: v for k, v in logs[0].items() if k not in coco}
    assert logs[3] == logs[0]  # last epoch: computed with COCO (same stand-in predictions)
    # trainer.test: always computed (with COCO), logged under test/
    test_logs, _ = run_validation(str(data_dir), 0, 1, cb, fake_trainer(1, 4), ("beta",), "test")
    assert test_logs == {k.replace("val/", "test/", 1): v for k, v in logs[0].items()}
    off = StubMetrics(every_n_epochs=None)
    assert run_validation(str(data_dir), 0, 1, off, fake_trainer(3, 4), ("beta",))[0] == {}
    assert run_validation(str(data_dir), 0, 1, off, fake_trainer(3, 4), ("beta",), "test")[0]
    with pytest.raises(ValueError, match="every_n_epochs must be >= 1"):
        StubMetrics(every_n_epochs=0)
