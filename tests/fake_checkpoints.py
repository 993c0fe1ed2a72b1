"""Checkpoint files laid out as training writes them, around a tiny random model."""

from __future__ import annotations

from pathlib import Path

import torch

TINY_MODEL_CFG = {
    "_target_": "cellsam.models.cellsam.build_cellsam",
    "shared_trunk": True,
    "sam": {"variant": "tiny", "checkpoint": None},
    "finder": {"hidden_dim": 32, "ffn_dim": 64, "num_heads": 4, "num_encoder_layers": 1,
               "num_decoder_layers": 2, "num_queries": 32},
}
# a SAC without a recorded base (random tiny SAM): the file holds every weight
TINY_SAC_CFG = {
    "_target_": "cellsam.models.sac.build_sac",
    "sam": {"variant": "tiny", "checkpoint": None, "image_size": 128},
    "lora": {"rank": 2, "alpha": 4.0, "dropout": 0.0, "blocks": None},
    "prompter": {"input": "image", "base_channels": 4, "depth": 2},
}


def write_checkpoint(path: Path, inference: dict | None = None, stage: str = "sam",
                     seed: int = 0) -> Path:
    """A Lightning-style dict (`state_dict` under `model.`) plus the cellsam metadata;
    `stage="sac"` writes a tiny SAC instead of a tiny CellSAM."""
    from cellsam.utils.checkpoint import build_model_from_meta, make_meta

    torch.manual_seed(seed)
    model_cfg = TINY_SAC_CFG if stage == "sac" else TINY_MODEL_CFG
    run_config = {"model": model_cfg, "inference": inference or {}}
    meta = make_meta(stage, run_config, {}, inference)
    model = build_model_from_meta(meta)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "cellsam": meta}, path)
    return path
