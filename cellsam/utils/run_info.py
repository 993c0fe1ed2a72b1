"""`run_info.json`: what ran, where, on which code and data (one per run folder)."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

RUN_INFO = "run_info.json"
PACKAGES = (
    "cellsam",
    "torch",
    "torchvision",
    "lightning",
    "hydra-core",
    "omegaconf",
    "segment-anything",
    "numpy",
    "scipy",
    "scikit-image",
    "pycocotools",
    "faster-coco-eval",
    "hydra-submitit-launcher",
    "submitit",
    "torchdata",
    "wandb",
)
RESOLVED_CONFIG = "config_resolved.yaml"  # .hydra/config.yaml keeps the ${...} interpolations
SLURM_VARS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_NAME",
    "SLURM_NNODES",
    "SLURM_NTASKS",
    "SLURM_JOB_NODELIST",
    "SLURM_RESTART_COUNT",
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def git_state(repo: Path) -> dict[str, Any]:
    """Commit hash and whether the work tree has uncommitted changes (None outside git)."""

    def run(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=True
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_names() -> list[str]:
    if torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"]


def data_checksums(datasets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per dataset: its path and the manifest's per-split sha256 (None if not there yet)."""
    out = {}
    for name, entry in datasets.items():
        manifest = Path(entry["path"]) / "manifest.json"
        info: dict[str, Any] = {"path": str(entry["path"]), "splits": None}
        if manifest.is_file():
            splits = json.loads(manifest.read_text()).get("splits", {})
            info["splits"] = {s: v.get("sha256") for s, v in splits.items()}
        out[name] = info
    return out


def write_run_info(output_dir: Path, cfg: Any, datamodule: Any | None = None) -> dict[str, Any]:
    """Write `run_info.json` at the start of a run (a restarted run appends a restart entry)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / RUN_INFO
    info: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    root = Path(__file__).resolve().parents[2]
    now = _now()
    record = {
        "git": git_state(root),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "hostname": socket.gethostname(),
        "slurm": {k: os.environ.get(k) for k in SLURM_VARS},
        "devices": device_names(),
        "command": sys.argv,
        "data": data_checksums(getattr(datamodule, "datasets", {}) or {}),
    }
    if info:
        info.setdefault("restarts", []).append({"start_time": now, **record})
    else:
        stage = OmegaConf.select(cfg, "stage.name", default=cfg.get("task_name"))
        info = {"stage": stage, "start_time": now, "end_time": None, **record}
    path.write_text(json.dumps(info, indent=2, default=str))
    if OmegaConf.is_config(cfg):
        (output_dir / RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return info


def finish_run_info(output_dir: Path, result: dict[str, Any]) -> None:
    path = Path(output_dir) / RUN_INFO
    info = json.loads(path.read_text()) if path.is_file() else {}
    info["end_time"] = _now()
    info["result"] = result
    path.write_text(json.dumps(info, indent=2, default=str))
