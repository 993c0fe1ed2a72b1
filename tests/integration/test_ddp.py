"""DDP on CPU (gloo): both stages train with two processes, and the loss normalisation makes
two processes on half batches equal to one process on the whole batch.

- Loss normalisation, per stage: each of two processes computes a training step on its half
  of a 4-image batch whose halves hold different numbers of cells; DDP averages gradients,
  so the average of their gradients (and losses) must equal one process's on the 4 images.
  Stage 1 normalises by the box count all-reduced over ranks (DETR); a per-rank count fails.
- Training: `train.py trainer.devices=2 trainer.strategy=ddp` for stage 1, then stage 2
  from its checkpoint; one run folder per job, shared by both ranks.
"""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conf_values import stage_module_args
from tiny_train import (
    ROOT,
    ddp_worker,
    global_batch,
    slice_batch,
    step_gradients,
    tiny_overrides,
    without_cells,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_same(ddp: dict, single_loss: float, single_grads: dict[str, torch.Tensor]) -> None:
    assert ddp["loss"] == pytest.approx(single_loss, rel=1e-5, abs=1e-6)
    assert ddp["grads"].keys() == single_grads.keys() and single_grads
    for name, g in single_grads.items():
        torch.testing.assert_close(ddp["grads"][name], g, rtol=1e-4, atol=1e-7, msg=name)


@pytest.fixture(scope="module")
def two_ranks(synthetic_dir, tmp_path_factory) -> dict:
    """Both stages' averaged losses and gradients from one two-process group."""
    out = tmp_path_factory.mktemp("ddp") / "steps.pt"
    _spawn((2, _free_port(), ["finder", "sam"], str(synthetic_dir), str(out)))
    return torch.load(out, weights_only=False)


def _spawn(args: tuple, timeout: float = 180.0) -> None:
    """`mp.spawn` two ranks of `ddp_worker`, failing (not hanging) after `timeout` s."""
    context = mp.spawn(ddp_worker, args=args, nprocs=2, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"DDP ranks did not finish within {timeout:.0f} s "
                        "(collectives out of step)")


def test_rank_without_cells_stays_in_step_and_logs_the_global_batch(synthetic_dir, tmp_path):
    """Rank 1's batch holds no cell: both ranks still make the same collectives (the run
    finishes), and the logged scalars and gradients equal one process's on the global batch
    (rank 0's images plus rank 1's empty ones)."""
    out = tmp_path / "steps.pt"
    _spawn((2, _free_port(), ["finder", "sam"], str(synthetic_dir), str(out), 1))
    ddp = torch.load(out, weights_only=False)
    batch = global_batch(synthetic_dir, 4)
    merged = {**batch}
    empty = without_cells(slice_batch(batch, 2, 4))
    merged["labels"] = torch.cat([batch["labels"][:2], empty["labels"]])
    merged["targets"] = batch["targets"][:2] + empty["targets"]
    for stage in ("finder", "sam"):
        logged: dict[str, float] = {}
        single_loss, single_grads = step_gradients(stage, merged, logged)
        _check_same(ddp[stage], single_loss, single_grads)
        assert ddp[stage]["logged"].keys() == logged.keys() and "train/loss" in logged
        for key, value in logged.items():
            assert ddp[stage]["logged"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_finder_loss_normalisation_matches_one_process(synthetic_dir, two_ranks):
    ddp = two_ranks["finder"]
    boxes = ddp["boxes"]
    assert boxes[:2].sum() != boxes[2:].sum(), "halves must differ in cell count for this test"
    single_loss, single_grads = step_gradients("finder", global_batch(synthetic_dir, 4))
    _check_same(ddp, single_loss, single_grads)


def test_sam_loss_normalisation_matches_one_process(synthetic_dir, two_ranks):
    single_loss, single_grads = step_gradients("sam", global_batch(synthetic_dir, 4))
    _check_same(two_ranks["sam"], single_loss, single_grads)


def _one_process_box_map(ckpt: Path, data_dir: Path) -> float:
    from cellsam.data.datamodule import CellDataModule, collate
    from cellsam.metrics.boxes_ap import box_ap_by_dataset
    from cellsam.systems.finder_module import FinderModule
    from cellsam.utils.checkpoint import load_model

    module = FinderModule(load_model(ckpt)[0], **stage_module_args("finder")).eval()
    dm = CellDataModule({"synthetic": {"path": str(data_dir)}}, num_workers=0, input_size=128)
    items = list(dm.split_datasets("val")["synthetic"])
    batch = collate(items)
    h, w = batch["labels"].shape[-2:]
    dets = module.detections(batch, h, w)
    records = [{"dataset": "synthetic", "index": i, "gt_boxes": t["boxes_xyxy"].numpy(),
                "boxes": d["boxes"].numpy(), "scores": d["scores"].numpy()}
               for i, (t, d) in enumerate(zip(batch["targets"], dets))]
    return box_ap_by_dataset(records)["all"]["box_map"]


def _run(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def test_two_process_ddp_trains_both_stages(synthetic_dir, tmp_path):
    import sys

    # trainer=ddp (GPU, bf16) made CPU-able: gloo, 32-bit
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true",
           "trainer.devices=2", f"paths.log_dir={tmp_path}"]
    common = [o for o in tiny_overrides(synthetic_dir, steps=2, epochs=1) if o != "trainer=cpu"]
    common += ddp
    finder_dir = tmp_path / "finder"
    _run([sys.executable, str(ROOT / "train.py"), "stage=finder", *common,
          f"hydra.run.dir={finder_dir}"])
    info = json.loads((finder_dir / "run_info.json").read_text())
    assert info["end_time"] and info["result"]["best_path"]
    assert not info.get("restarts"), "rank 1 must not start a second run record"
    last = finder_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["finder"]  # one folder only
    # The logged validation AP (each rank saw half of the 4 val images, records gathered)
    # equals one process's on all 4 images with the same weights.
    key = "val/all/box_map"
    with (finder_dir / "csv" / "metrics.csv").open() as f:
        logged = [float(r[key]) for r in csv.DictReader(f) if r.get(key)]
    assert logged and logged[-1] > 0
    assert logged[-1] == pytest.approx(_one_process_box_map(last, synthetic_dir), rel=1e-4)

    sam_dir = tmp_path / "sam"
    _run([sys.executable, str(ROOT / "train.py"), "stage=sam", f"finder_ckpt={last}", *common,
          f"hydra.run.dir={sam_dir}"])
    info = json.loads((sam_dir / "run_info.json").read_text())
    assert info["end_time"] and info["stage"] == "sam"
    assert torch.load(sam_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)["global_step"] == 2
