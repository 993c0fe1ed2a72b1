"""Pieces both stages' LightningModules share: freezing, lr schedule, checkpoint metadata."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from cellsam.models.cellsam import PARTS, CellSAM
from cellsam.utils.checkpoint import META_KEY, make_meta
from cellsam.utils.distributed import all_reduce_mean


def freeze_except(model: CellSAM, trainable: Iterable[str]) -> None:
    """Set `requires_grad` so that only the named parts (see `PARTS`) train."""
    trainable = list(trainable)
    unknown = sorted(set(trainable) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown trainable parts {unknown}; choose from {list(PARTS)}")
    for p in model.parameters():
        p.requires_grad_(False)
    for part in trainable:
        for p in model.part_parameters(part):
            p.requires_grad_(True)


def adamw(
    groups: list[dict[str, Any]] | list[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW over parameters or parameter groups; the fused kernel (one kernel instead of a
    loop over every tensor) where each parameter is a float tensor on the CPU or a CUDA
    device, else PyTorch's default."""
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fusable or None)


def with_step_decay(optimizer: torch.optim.Optimizer, lr_drop: int, factor: float
                    ) -> dict[str, Any]:
    """Lightning's optimizer config with one x`factor` lr decay every `lr_drop` epochs."""
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, lr_drop, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def trainable_adamw(module: Any) -> torch.optim.Optimizer | dict[str, Any]:
    """AdamW over the module's parameters that require gradients, with the step decay of
    its `lr_drop` / `lr_drop_factor` hyperparameters when `lr_drop` is set (stages sam and
    sac)."""
    hp = module.hparams
    params = [p for p in module.model.parameters() if p.requires_grad]
    optimizer = adamw(params, hp.lr, hp.weight_decay)
    if not hp.lr_drop:
        return optimizer
    return with_step_decay(optimizer, hp.lr_drop, hp.lr_drop_factor)


def log_step_scalars(
    module: Any, values: dict[str, Any], batch_size: int, prog_bar: tuple[str, ...] = ()
) -> None:
    """Log a training step's scalars, averaged over ranks with one all-reduce.

    Every rank must pass the same names in the same order (a rank without cells passes
    zeros): then each rank makes exactly one collective per step, and Lightning's own
    per-key syncing (one collective per `self.log`) is not used.
    """
    names = list(values)
    stacked = torch.stack([
        torch.as_tensor(v, device=module.device).detach().float().reshape(())
        for v in values.values()
    ])
    stacked = all_reduce_mean(stacked)
    for name, value in zip(names, stacked):
        module.log(name, value, prog_bar=name in prog_bar, batch_size=batch_size,
                   sync_dist=False)


class CheckpointMetaMixin:
    """Writes `checkpoint["cellsam"]`: stage, resolved config, datasets, best metric."""

    stage: str
    run_config: dict[str, Any]

    def inference_settings(self) -> dict[str, Any]:
        return dict(self.run_config.get("inference", {}) or {})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        best: dict[str, Any] = {}
        callback = getattr(self.trainer, "checkpoint_callback", None)
        if callback is not None and getattr(callback, "monitor", None):
            score = callback.best_model_score
            best = {
                "monitor": callback.monitor,
                "mode": callback.mode,
                "value": None if score is None else float(score),
                "path": callback.best_model_path,
            }
        meta = make_meta(self.stage, self.run_config, best, self.inference_settings())
        meta["input_size"] = self.model.image_size
        checkpoint[META_KEY] = meta
