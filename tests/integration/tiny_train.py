"""Shared by the integration tests: the smallest training settings, in-process configs, and
test-only callbacks (imported by Hydra through `_target_`, so this folder is on sys.path)."""

from __future__ import annotations

import os
import signal as signal_module
import sys
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def tiny_overrides(data_dir: Path, steps: int | None = 3, epochs: int = 1,
                   batch_size: int = 2) -> list[str]:
    """A tiny CellSAM (128 px input, 48 queries, 1+1 layers) on an existing synthetic set;
    `steps` batches per epoch (None: the whole train split)."""
    return [
        "model=tiny", "trainer=cpu", "logger=csv", "data=synthetic",
        f"data.datasets.synthetic.path={data_dir}", "~data.datasets.synthetic.generate",
        "data.num_workers=0", f"data.batch_size={batch_size}",
        "model.finder.num_queries=48", "model.finder.num_encoder_layers=1",
        "model.finder.num_decoder_layers=1", "model.finder.hidden_dim=32",
        "model.finder.ffn_dim=64", "+model.sam.image_size=128",
        f"trainer.max_epochs={epochs}", f"+trainer.limit_train_batches={steps or 1.0}",
        "+trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
        "+trainer.enable_progress_bar=false",
    ]


def compose_in_process(overrides: list[str], output_dir: Path) -> DictConfig:
    """The train config without Hydra's runtime (the run folder is given explicitly)."""
    from cellsam.utils.resolvers import register_resolvers

    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def run_train(overrides: list[str]) -> dict:
    """Compose the train config with `overrides` and run `train()` in this process."""
    from cellsam.tasks.train import train
    from cellsam.utils.resolvers import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return train(cfg)


def train_command(overrides: list[str], *hydra_args: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *hydra_args, *overrides]


def model_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


class SignalAtStep(Callback):
    """Sends `signal` to this process when `global_step` reaches `step` (before that step)."""

    def __init__(self, step: int, signal: str = "USR2") -> None:
        self.step, self.signum = step, int(getattr(signal_module, f"SIG{signal}"))

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class CrashAtStep(Callback):
    """Dies (no checkpoint) when `global_step` reaches `step`, like a killed process."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"killed at step {self.step}")



# -- loss normalisation across processes (test_ddp.py) ---------------------------------------
def tiny_module(stage: str):
    """A FinderModule or SamModule around the same tiny CellSAM on every call (fixed seed)."""
    import warnings

    from conf_values import stage_module_args  # tests/ (on sys.path under pytest only)

    from cellsam.models.cellsam import build_cellsam

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_cellsam(
            sam={"variant": "tiny", "checkpoint": None, "image_size": 128},
            finder={"hidden_dim": 32, "ffn_dim": 64, "num_heads": 4, "num_encoder_layers": 1,
                    "num_decoder_layers": 1, "num_queries": 48},
        )
    if stage == "finder":
        from cellsam.systems.finder_module import FinderModule

        return FinderModule(model, **stage_module_args("finder"))
    from cellsam.systems.sam_module import SamModule

    # no random draws: ranks and one process agree
    return SamModule(model, **stage_module_args("sam", box_jitter=0.0))


def global_batch(data_dir: Path, n: int = 4) -> dict:
    """`n` train images (no augmentation) as one batch: the n/2 with the fewest cells, then
    the n/2 with the most, so the two halves (ranks) hold different numbers of boxes."""
    from cellsam.data.datamodule import CellDataModule, collate

    dm = CellDataModule({"synthetic": {"path": str(data_dir)}}, batch_size=n, num_workers=0,
                        input_size=128)
    dataset = dm._open("train", train=False)["synthetic"]
    items = sorted((dataset[i] for i in range(len(dataset))), key=lambda it: len(it["boxes"]))
    return collate(items[: n // 2] + items[len(items) - n // 2:])


def slice_batch(batch: dict, start: int, stop: int) -> dict:
    return {k: v[start:stop] for k, v in batch.items()}


def without_cells(batch: dict) -> dict:
    """The same images with every cell removed (labels 0, no targets)."""
    empty = {"boxes": torch.zeros(0, 4), "boxes_xyxy": torch.zeros(0, 4),
             "ids": torch.zeros(0, dtype=torch.int64)}
    return {**batch, "labels": torch.zeros_like(batch["labels"]),
            "targets": [dict(empty) for _ in batch["targets"]]}


def step_gradients(stage: str, batch: dict, logged: dict | None = None
                   ) -> tuple[float, dict[str, torch.Tensor]]:
    """One training step's loss and the trainable parameters' gradients; the values the
    step logs go into `logged` when given."""
    module = tiny_module(stage)
    module.train()
    if logged is not None:
        module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    loss = module.training_step(batch, 0)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()
             if p.requires_grad and p.grad is not None}
    return float(loss), grads


def ddp_worker(rank: int, world: int, port: int, stages: list[str], data_dir: str,
               out: str, empty_rank: int | None = None) -> None:
    """One rank of a gloo process group: per stage, a training step on its share of the
    global batch, then the gradient average that DDP performs; rank 0 saves the results
    (with what each step logged). Rank `empty_rank` gets its share without any cell."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        batch = global_batch(Path(data_dir), 2 * world)
        boxes = torch.tensor([float(len(t["boxes"])) for t in batch["targets"]])
        results = {}
        share = slice_batch(batch, 2 * rank, 2 * rank + 2)
        if rank == empty_rank:
            share = without_cells(share)
        for stage in stages:
            logged: dict[str, float] = {}
            loss, grads = step_gradients(stage, share, logged)
            for g in grads.values():
                dist.all_reduce(g)
                g /= world
            mean_loss = torch.tensor(loss)
            dist.all_reduce(mean_loss)
            mean_loss /= world
            results[stage] = {"loss": float(mean_loss), "grads": grads, "boxes": boxes,
                              "logged": logged}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()
