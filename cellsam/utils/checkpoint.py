"""Self-describing checkpoints: what a stage saved and how to rebuild the model from it.

A Lightning checkpoint of either stage carries, under `checkpoint["cellsam"]`, the stage,
the full resolved run config, the dataset names, the best validation metric and the
inference settings, so stage 2, evaluation and prediction need no extra arguments.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cellsam.models.cellsam import CellSAM, build_cellsam
from cellsam.utils.atomic import atomic_path

META_KEY = "cellsam"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or not a cellsam checkpoint."""


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        # weights_only: tensors and plain containers only. Checkpoints travel between labs,
        # and a full unpickle would run whatever code a crafted file names. Everything a
        # cellsam checkpoint holds (weights, optimiser and loop state, the config as plain
        # containers) loads this way.
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused, the file holds objects other than tensors and plain "
            f"containers, which could run code when loaded ({str(err).splitlines()[0]}); "
            "cellsam checkpoints never do: was it written by another program?") from err
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or META_KEY not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path}: not a cellsam training checkpoint (no '{META_KEY}' metadata); "
            "official SAM weights go to model.sam.checkpoint instead"
        )
    return ckpt


def model_state(ckpt: dict[str, Any], prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The CellSAM weights inside a Lightning state dict (the module keeps them at `model`)."""
    return {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def build_sac_from_meta(meta: dict[str, Any], base_checkpoint: str | Path | None = None
                        ) -> Any:
    """A SAC checkpoint's model with its base SAM weights loaded (from the recorded file, or
    `base_checkpoint`), refusing a base whose sha256 differs from the recorded one."""
    from cellsam.models.sac import build_sac

    cfg = dict(meta["model"])
    cfg.pop("_target_", None)
    want = (meta.get("sac") or {}).get("base")
    sam = dict(cfg["sam"])
    sam["checkpoint"] = None if want is None else (base_checkpoint or sam.get("checkpoint"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "random ViT" warning: weights come from the file
        try:
            model = build_sac(**{**cfg, "sam": sam})
        except (FileNotFoundError, OSError) as err:
            raise CheckpointError(
                f"the SAC checkpoint's base SAM weights {want['source']} are not readable "
                f"({err}); give the file (sha256 {want['sha256']}) as base_checkpoint") from err
    have = model.base
    if want is not None and have["sha256"] != want["sha256"]:
        raise CheckpointError(
            f"SAC checkpoint was trained on base {want['file']!r} (sha256 {want['sha256']}), "
            f"but the given base {have['file']!r} has sha256 {have['sha256']}: refusing to load")
    return model


def build_model_from_meta(meta: dict[str, Any]) -> CellSAM:
    """Rebuild the architecture recorded in a checkpoint's metadata (weights not loaded;
    a SAC checkpoint's base SAM weights are, see `build_sac_from_meta`)."""
    if meta.get("stage") == "sac":
        return build_sac_from_meta(meta)
    cfg = dict(meta["model"])
    cfg.pop("_target_", None)
    cfg["sam"] = {**cfg["sam"], "checkpoint": None}  # weights come from the checkpoint
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "random ViT" warning does not apply here
        return build_cellsam(**cfg)


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu",
    base_checkpoint: str | Path | None = None,
) -> tuple[CellSAM, dict[str, Any]]:
    """CellSAM (or SAC) with the checkpoint's weights, and the checkpoint's metadata.

    A SAC checkpoint stores only what differs from its base SAM weights: those are read
    from the recorded file, or from `base_checkpoint`, and must have the recorded sha256.
    """
    ckpt = read_checkpoint(path, map_location)
    meta = ckpt[META_KEY]
    if meta.get("stage") == "sac":
        from cellsam.models.sac import key_part

        try:
            model = build_sac_from_meta(meta, base_checkpoint)
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {err}") from err
        saved = (meta.get("sac") or {}).get("saved_parts", "all")
        missing, unexpected = model.load_state_dict(model_state(ckpt), strict=False)
        if saved != "all":  # the base weights are not in the file
            missing = [k for k in missing if key_part(k) in saved]
    else:
        model = build_model_from_meta(meta)
        missing, unexpected = model.load_state_dict(model_state(ckpt), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the recorded model (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    return model, meta


def make_meta(
    stage: str,
    run_config: dict[str, Any] | None,
    best: dict[str, Any] | None,
    inference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata block a module writes into each checkpoint it saves."""
    run_config = run_config or {}
    data = run_config.get("data", {})
    return {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "model": run_config.get("model", {}),
        "config": run_config,
        "datasets": list(data.get("datasets", {})),
        "input_size": None,
        "best": best or {},
        "inference": inference or {},
    }


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but each file is written under a temporary name and
    renamed when complete: a run killed during a save keeps the previous checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
