"""`run_info.json` records every field the run records promise (issue 7, part 5)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import yaml
from omegaconf import OmegaConf

from cellsam.utils.run_info import RESOLVED_CONFIG, RUN_INFO, finish_run_info, write_run_info


def test_run_info_has_every_field(tmp_path, synthetic_dir, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    cfg = OmegaConf.create({"stage": {"name": "finder"}, "seed": 1,
                            "paths": {"output_dir": str(tmp_path)},
                            "ckpt_dir": "${paths.output_dir}/checkpoints"})
    datamodule = SimpleNamespace(datasets={"synthetic": {"path": str(synthetic_dir)}})
    write_run_info(tmp_path, cfg, datamodule)
    info = json.loads((tmp_path / RUN_INFO).read_text())

    assert info["stage"] == "finder"
    assert set(info["git"]) == {"commit", "dirty"}
    if info["git"]["commit"] is not None:  # inside a git checkout (CI, developers)
        assert len(info["git"]["commit"]) == 40 and isinstance(info["git"]["dirty"], bool)
    for name in ("cellsam", "torch", "lightning", "hydra-core", "submitit", "torchdata"):
        assert name in info["packages"]
    assert info["packages"]["torch"] and info["packages"]["lightning"]
    assert info["hostname"] and info["python"]
    slurm = info["slurm"]
    assert slurm["SLURM_JOB_ID"] == "4243"
    assert (slurm["SLURM_ARRAY_JOB_ID"], slurm["SLURM_ARRAY_TASK_ID"]) == ("4240", "3")
    assert info["devices"] and all(isinstance(d, str) for d in info["devices"])
    splits = info["data"]["synthetic"]["splits"]
    assert set(splits) == {"train", "val", "test"}
    assert all(isinstance(v, dict) and v for v in splits.values())  # per-file sha256
    assert info["start_time"] and info["end_time"] is None
    assert info["command"]
    resolved = yaml.safe_load((tmp_path / RESOLVED_CONFIG).read_text())
    assert resolved["ckpt_dir"] == f"{tmp_path}/checkpoints"

    finish_run_info(tmp_path, {"best_score": 0.5})
    info = json.loads((tmp_path / RUN_INFO).read_text())
    assert info["end_time"] >= info["start_time"] and info["result"] == {"best_score": 0.5}

    write_run_info(tmp_path, cfg, datamodule)  # the same run started again (resume)
    info = json.loads((tmp_path / RUN_INFO).read_text())
    assert len(info["restarts"]) == 1 and info["restarts"][0]["start_time"]
    assert info["restarts"][0]["slurm"]["SLURM_JOB_ID"] == "4243"
