"""A two-job sweep through submitit's local executor (`-m launcher=local`) writes two run
folders inside one sweep folder, and `cellsam-collect` builds the table from them."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from tiny_train import ROOT, tiny_overrides

from cellsam.tasks.collect import main as collect


def test_local_launcher_sweep_and_collect(synthetic_dir, tmp_path):
    args = [sys.executable, str(ROOT / "train.py"), "-m", "launcher=local", "stage=finder",
            *tiny_overrides(synthetic_dir, steps=1), f"paths.log_dir={tmp_path}",
            "stage.module.lr=1e-4,3e-4"]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]

    sweeps = list((tmp_path / "multirun" / "finder").iterdir())
    assert len(sweeps) == 1, "both jobs in the sweep folder the launcher chose"
    sweep = sweeps[0]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in runs] == ["0", "1"]
    for run in runs:
        info = json.loads((run / "run_info.json").read_text())
        assert info["end_time"] and info["result"]["best_path"]
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert (run / "csv" / "metrics.csv").is_file()
        assert (run / ".hydra" / "config.yaml").is_file()
    assert list((sweep / ".submitit").glob("*/*_0_log.out")), "submitit job logs"

    metric = "val/all/box_ap50"
    assert collect([str(sweep), "--metric", metric]) == 0
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["stage.module.lr"] for r in rows) == ["0.0001", "0.0003"]
    assert all(r["status"] == "done" and r[metric] != "" for r in rows)
    values = [float(r[metric]) for r in rows]
    assert values == sorted(values, reverse=True)
    md = (sweep / "summary.md").read_text()
    assert f"| {metric} |" in md and md.count("| done |") == 2


def test_local_launcher_runs_ddp_with_one_task_per_device(synthetic_dir, tmp_path):
    """`launcher=local trainer.devices=2`: submitit starts two tasks and they become the two
    DDP ranks of one run (cellsam.utils.cluster), sharing one run folder."""
    overrides = [o for o in tiny_overrides(synthetic_dir, steps=1) if o != "trainer=cpu"]
    args = [sys.executable, str(ROOT / "train.py"), "-m", "launcher=local", "stage=finder",
            *overrides, "trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true",
            "trainer.devices=2", f"paths.log_dir={tmp_path}"]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    (sweep,) = (tmp_path / "multirun" / "finder").iterdir()
    info = json.loads((sweep / "0" / "run_info.json").read_text())
    assert info["end_time"] and not info.get("restarts")
    logs = sorted((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2  # one per task
    text = "".join(p.read_text() for p in logs)
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in text and "GLOBAL_RANK: 1, MEMBER: 2/2" in text
