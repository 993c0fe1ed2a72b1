"""OmegaConf resolvers used by the configs; registered by the entry points before composing."""

from __future__ import annotations

import os
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from omegaconf import OmegaConf


@lru_cache(maxsize=1)
def run_id() -> str:
    """A name for this job's run folder, the same on every call within one process.

    Under SLURM it is the job id (array job id and task id for arrays), so every rank of a
    job agrees; elsewhere a timestamp with microseconds and the process id, so two runs
    started in the same second never collide. (Lightning's DDP children get the parent's
    folder passed explicitly, so they do not call this.)
    """
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f") + f"_{os.getpid()}"


def folder_name(choice: object, datasets: object = None, inputs: object = None,
                predictions: object = None) -> str:
    """The data choice as a folder name. `data=[a,b]` (which Hydra records as no single
    choice) gives the dataset names joined: `a+b`. Without data (`predict.py`) the
    `input` names the folder: its folder (for a folder or a glob) or file stem. Scoring a
    folder of label images (`eval.py pred_dir=...`) is named after that folder."""
    if predictions:
        return input_name(str(predictions))
    if isinstance(choice, str):
        return choice.replace("/", "-")
    if datasets:
        return "+".join(str(name) for name in datasets)
    if inputs:
        return input_name(str(inputs))
    return "none"


def input_name(spec: str) -> str:
    """`images/*.tif` -> `images`, `plates/a1.png` -> `a1`, `data/raw/` -> `raw`."""
    path = Path(spec.rstrip("/"))
    while path.parts and any(c in path.name for c in "*?["):
        path = path.parent
    if path.suffix and not any(c in spec for c in "*?["):
        name = path.stem
    else:
        name = path.name
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return name or "input"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("cellsam_name"):
        OmegaConf.register_new_resolver("cellsam_name", folder_name)
    if not OmegaConf.has_resolver("cellsam_run_id"):
        # use_cache: the value is stored in the config itself, so the jobs of a sweep that a
        # launcher runs in other processes (submitit) get the folder the sweep chose.
        OmegaConf.register_new_resolver("cellsam_run_id", lambda: run_id(), use_cache=True)
