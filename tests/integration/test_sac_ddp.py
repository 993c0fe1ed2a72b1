"""DDP on CPU (gloo) for the SAC stage, as test_ddp.py for the other stages:

- two processes on the halves of a 4-image batch (halves with different cell counts; or
  one half without any cell) average to one process's loss, gradients and logged scalars on
  the whole batch (point prompts are drawn per image, not per rank);
- `train.py stage=sac trainer.devices=2 trainer.strategy=ddp` trains and checkpoints.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from tiny_train import ROOT, global_batch, slice_batch, without_cells

TRAINABLE = ["lora", "neck", "prompt_encoder", "mask_decoder"]


def tiny_sac_module():
    """The same tiny SacModule (random base, every SAM part and the prompter training) on
    every call."""
    import warnings

    from conf_values import stage_module_args

    from cellsam.models.sac import build_sac
    from cellsam.systems.sac_module import SacModule

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_sac(sam={"variant": "tiny", "checkpoint": None, "image_size": 128},
                          lora={"rank": 2, "alpha": 4.0, "dropout": 0.0, "blocks": None},
                          prompter={"input": "image", "base_channels": 4, "depth": 2})
    return SacModule(model, **stage_module_args("sac", trainable=TRAINABLE, loss_size=128,
                                                max_cells_per_image=6))


def sac_step(batch: dict) -> tuple[float, dict[str, torch.Tensor], dict[str, float]]:
    module = tiny_sac_module()
    module.train()
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    loss = module.training_step(batch, 0)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()
             if p.requires_grad and p.grad is not None}
    return float(loss.detach()), grads, logged


def sac_worker(rank: int, world: int, port: int, data_dir: str, out: str,
               empty_rank: int | None) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        share = slice_batch(global_batch(Path(data_dir), 2 * world), 2 * rank, 2 * rank + 2)
        if rank == empty_rank:
            share = without_cells(share)
        loss, grads, logged = sac_step(share)
        for g in grads.values():
            dist.all_reduce(g)
            g /= world
        mean_loss = torch.tensor(loss)
        dist.all_reduce(mean_loss)
        if rank == 0:
            torch.save({"loss": float(mean_loss) / world, "grads": grads, "logged": logged}, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args: tuple, timeout: float = 240.0) -> None:
    context = mp.spawn(sac_worker, args=args, nprocs=2, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"DDP ranks did not finish within {timeout:.0f} s")


@pytest.mark.parametrize("empty_rank", [None, 1])
def test_two_ranks_equal_one_process(synthetic_dir, tmp_path, empty_rank):
    out = tmp_path / "steps.pt"
    _spawn((2, _free_port(), str(synthetic_dir), str(out), empty_rank))
    ddp = torch.load(out, weights_only=False)
    batch = global_batch(synthetic_dir, 4)
    if empty_rank is None:
        cells = [len(t["ids"]) for t in batch["targets"]]
        assert sum(cells[:2]) != sum(cells[2:]), "halves must differ in cell count"
    else:
        empty = without_cells(slice_batch(batch, 2, 4))
        batch = {**batch, "labels": torch.cat([batch["labels"][:2], empty["labels"]]),
                 "targets": batch["targets"][:2] + empty["targets"]}
    loss, grads, logged = sac_step(batch)
    assert ddp["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert ddp["grads"].keys() == grads.keys()
    assert any(".lora_" in n for n in grads) and any("prompter." in n for n in grads)
    for name, g in grads.items():
        torch.testing.assert_close(ddp["grads"][name], g, rtol=1e-4, atol=1e-7, msg=name)
    assert ddp["logged"].keys() == logged.keys()
    for key, value in logged.items():
        assert ddp["logged"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_two_process_ddp_trains_sac(synthetic_dir, tmp_path):
    from test_sac_stage import sac_overrides

    overrides = [o for o in sac_overrides(synthetic_dir, None, epochs=1, steps=2)
                 if o != "trainer=cpu"]
    run_dir = tmp_path / "sac"
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, "trainer=ddp",
           "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=2",
           f"paths.log_dir={tmp_path}", f"hydra.run.dir={run_dir}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-4000:]
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["end_time"] and info["stage"] == "sac" and not info.get("restarts")
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["cellsam"]["stage"] == "sac"
