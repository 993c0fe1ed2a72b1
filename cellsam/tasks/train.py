"""`train(cfg)`: build model, data, module, trainer from a composed config and fit."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from cellsam.utils.checkpoint import (
    AtomicCheckpointIO,
    build_model_from_meta,
    model_state,
    read_checkpoint,
)
from cellsam.utils.cluster import prepare_distributed_env
from cellsam.utils.run_info import finish_run_info, write_run_info

log = logging.getLogger(__name__)


def _model_and_config(cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """The model to train and its settings; stage 2 takes both from the stage-1 checkpoint."""
    run_config = OmegaConf.to_container(cfg, resolve=True)
    if cfg.stage.name == "sam":
        if not cfg.get("finder_ckpt"):
            raise ValueError("stage=sam needs finder_ckpt=<stage-1 checkpoint>")
        ckpt = read_checkpoint(cfg.finder_ckpt)
        meta = ckpt["cellsam"]
        model = build_model_from_meta(meta)
        model.load_state_dict(model_state(ckpt))
        if run_config["model"] != meta["model"]:
            log.info(
                "stage=sam: model settings taken from %s (model=... is ignored)", cfg.finder_ckpt
            )
        run_config["model"] = meta["model"]
        log.info("loaded stage-1 weights from %s", cfg.finder_ckpt)
        return model, run_config
    return instantiate(cfg.model, _convert_="all"), run_config


def build_module(
    module_cfg: DictConfig, model: Any, run_config: dict[str, Any]
) -> L.LightningModule:
    """The stage's LightningModule from its `_target_` config.

    Not `instantiate(..., run_config=...)`: Hydra would try to instantiate the `_target_`
    entries inside the run config it is handed.
    """
    kwargs = OmegaConf.to_container(module_cfg, resolve=True)
    cls = get_class(kwargs.pop("_target_"))
    return cls(model=model, run_config=run_config, **kwargs)


def resume_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """`ckpt_path=auto`: the run folder's `checkpoints/last.ckpt` if present (requeue/restart)."""
    if cfg.get("ckpt_path") in (None, "", "none"):
        return None
    if cfg.ckpt_path == "auto":
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    return str(cfg.ckpt_path)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit one stage. Returns `{"best_path", "best_score", "objective", "metrics"}`."""
    prepare_distributed_env()  # launcher=local with several devices: one rank per task
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    model, run_config = _model_and_config(cfg)
    datamodule = instantiate(cfg.data, input_size=model.image_size, _convert_="all")
    module = build_module(cfg.stage.module, model, run_config)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values() if lg]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                     plugins=[AtomicCheckpointIO()])
    if trainer.is_global_zero:
        datamodule.prepare_data()  # generate synthetic data first so run_info has its checksums
        write_run_info(output_dir, cfg, datamodule)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path(cfg, output_dir))
    ckpt_cb = trainer.checkpoint_callback
    best_path = (ckpt_cb.best_model_path or ckpt_cb.last_model_path) if ckpt_cb else ""
    best_score = ckpt_cb.best_model_score if ckpt_cb else None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    result = {
        "best_path": best_path,
        "best_score": None if best_score is None else float(best_score),
        "objective": None if best_score is None else float(best_score),
        "metrics": metrics,
    }
    if cfg.get("evaluate_after") and best_path and trainer.is_global_zero:
        from cellsam.tasks.evaluate import evaluate_checkpoint

        evaluate_checkpoint(best_path, cfg, output_dir, split=cfg.get("eval_split", "test"))
    if trainer.is_global_zero:
        finish_run_info(output_dir, result)
    log.info("best checkpoint: %s (%s = %s)", best_path, cfg.stage.monitor, result["best_score"])
    return result
