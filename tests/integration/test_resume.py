"""A run stopped after N steps and started again in the same folder ends with exactly the
weights of an uninterrupted run (CPU, fixed seed, augmentation on).

Two ways to stop: the preemption signal (the `Preemption` callback saves `last.ckpt` at
the step boundary; this is what a SLURM job does before its time limit) and a crash (no
save: the run restarts from the last end-of-epoch `last.ckpt`). Both restarts use
`ckpt_path=auto`, as a requeued job does. Runs in-process to keep the test short.
"""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import torch
from tiny_train import compose_in_process, model_weights, tiny_overrides

STEPS, EPOCHS = 3, 2  # 3 optimiser steps per epoch, 6 in all


def _train(cfg):
    from cellsam.tasks.train import train

    return train(cfg)


@pytest.fixture(scope="module")
def reference(synthetic_dir, tmp_path_factory) -> dict[str, torch.Tensor]:
    """Final weights of the uninterrupted run."""
    out = tmp_path_factory.mktemp("uninterrupted")
    _train(compose_in_process(tiny_overrides(synthetic_dir, STEPS, EPOCHS), out))
    return model_weights(out / "checkpoints" / "last.ckpt")


def _assert_same(weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert weights.keys() == reference.keys()
    differ = [k for k in reference if not torch.equal(weights[k], reference[k])]
    assert not differ, f"{len(differ)} tensors differ after resuming, e.g. {differ[:3]}"


def test_preempted_run_resumes_exactly(synthetic_dir, tmp_path, reference):
    stop_at = 4  # in the second epoch: the restart crosses an epoch boundary and a mid-epoch one
    overrides = tiny_overrides(synthetic_dir, STEPS, EPOCHS)
    stopper = ["+callbacks.stop._target_=tiny_train.SignalAtStep",
               f"+callbacks.stop.step={stop_at}"]
    with pytest.raises(SystemExit) as stopped:
        _train(compose_in_process(overrides + stopper, tmp_path))
    assert stopped.value.code == 128 + signal.SIGUSR2  # saved, not under SLURM: not requeued
    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == stop_at + 1  # saved after the step during which it arrived
    assert "combined_loader" in ckpt["loops"]["fit_loop"]["state_dict"]  # data position
    assert ckpt["callbacks"]["ResumeState"]["rng"]  # random states
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["end_time"] is None

    result = _train(compose_in_process(overrides, tmp_path))  # ckpt_path=auto: resumes
    assert result["best_path"]
    _assert_same(model_weights(last), reference)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["end_time"] and len(info["restarts"]) == 1
    with (tmp_path / "csv" / "metrics.csv").open() as f:  # the record spans both starts
        steps = {int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")}
    # all but the step during which the signal came (its update is in the checkpoint; the
    # process left before Lightning logged it)
    assert steps == set(range(STEPS * EPOCHS)) - {stop_at}


def test_crashed_run_resumes_from_last_epoch(synthetic_dir, tmp_path, reference):
    overrides = tiny_overrides(synthetic_dir, STEPS, EPOCHS)
    crash = ["+callbacks.stop._target_=tiny_train.CrashAtStep", "+callbacks.stop.step=4"]
    with pytest.raises(RuntimeError, match="killed at step 4"):
        _train(compose_in_process(overrides + crash, tmp_path))
    last = Path(tmp_path / "checkpoints" / "last.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == STEPS
    _train(compose_in_process(overrides, tmp_path))
    _assert_same(model_weights(last), reference)


def test_submitit_requeue_resumes_in_the_same_folder(synthetic_dir, tmp_path):
    """The path a SLURM job takes, run by submitit's local executor: the preemption signal
    reaches the job, the callback saves `last.ckpt` and hands over to submitit's handler,
    which re-pickles the job and requeues it; the requeued job resumes in the same run folder
    and finishes."""
    import os
    import subprocess
    import sys

    from tiny_train import ROOT

    overrides = tiny_overrides(synthetic_dir, STEPS, EPOCHS)
    stopper = ["+callbacks.stop._target_=tiny_train.SignalAtStep", "+callbacks.stop.step=4"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    args = [sys.executable, str(ROOT / "train.py"), "-m", "launcher=local", "stage=finder",
            *overrides, *stopper, f"paths.log_dir={tmp_path}"]
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    (sweep,) = (tmp_path / "multirun" / "finder").iterdir()
    run = sweep / "0"
    info = json.loads((run / "run_info.json").read_text())
    assert info["end_time"] and len(info["restarts"]) == 1  # started twice, in one folder
    log = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.out"))
    assert "Requeued job" in log  # submitit's own requeue
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == STEPS * EPOCHS
