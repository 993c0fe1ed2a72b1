"""The preemption callback's requeue decisions, without a cluster (fake `scontrol`)."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from cellsam.callbacks.preemption import Preemption, slurm_job_id


@pytest.fixture()
def fake_scontrol(tmp_path, monkeypatch) -> Path:
    """`scontrol` on PATH that records its arguments."""
    calls = tmp_path / "calls.txt"
    program = tmp_path / "bin" / "scontrol"
    program.parent.mkdir()
    program.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{program.parent}:{os.environ['PATH']}")
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    return calls


def test_signal_names():
    assert Preemption("USR2").signum == signal.SIGUSR2
    assert Preemption("SIGUSR1").signum == signal.SIGUSR1
    assert Preemption(int(signal.SIGTERM)).signum == signal.SIGTERM


def test_plain_slurm_job_requeues_itself(fake_scontrol, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert Preemption()._requeue() == 0
    assert fake_scontrol.read_text().split() == ["requeue", "77"]


def test_array_task_requeues_itself(fake_scontrol, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "80")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert slurm_job_id() == "77_2"
    Preemption()._requeue()
    assert fake_scontrol.read_text().split() == ["requeue", "77_2"]


def test_max_requeues(fake_scontrol, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    assert Preemption(max_requeues=3)._requeue() == 128 + signal.SIGUSR2  # saved, not requeued
    assert not fake_scontrol.exists()


def test_not_under_slurm_only_saves(fake_scontrol):
    assert Preemption()._requeue() == 128 + signal.SIGUSR2
    assert not fake_scontrol.exists()


def test_submitit_handler_is_used_when_present(fake_scontrol, monkeypatch):
    """Under hydra-submitit, submitit's own handler (which re-pickles the job and counts
    time-outs) requeues; the callback does not call scontrol itself."""
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    seen = []
    callback = Preemption()
    callback._previous = lambda signum, frame: seen.append(signum)
    assert callback._requeue() == 0
    assert seen == [signal.SIGUSR2] and not fake_scontrol.exists()


def test_handler_sets_a_flag_and_hands_back_after_training():
    before = signal.getsignal(signal.SIGUSR2)
    seen = []
    signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    try:
        callback = Preemption()
        callback.setup(None, None, "fit")
        os.kill(os.getpid(), signal.SIGUSR2)
        assert callback.received and not seen  # only a flag while training
        callback.teardown(None, None, "fit")
        os.kill(os.getpid(), signal.SIGUSR2)
        assert seen == [signal.SIGUSR2]  # the earlier handler is back
        # A handler left installed after training (Lightning restores the handlers it saw
        # at fit start) forwards to the earlier one, and a new fit unwraps it.
        signal.signal(signal.SIGUSR2, callback._handler)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert seen == [signal.SIGUSR2] * 2
        again = Preemption()
        again.setup(None, None, "fit")
        assert again._previous is callback._previous
        again.teardown(None, None, "fit")
    finally:
        signal.signal(signal.SIGUSR2, before)
