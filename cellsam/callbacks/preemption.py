"""Preemption-safe training: save on the scheduler's warning signal, requeue, resume exactly.

Two callbacks (both in `conf/callbacks/default.yaml`):

`Preemption` — SLURM sends a signal (`--signal=USR2@<seconds>`) shortly before a job's time
limit or preemption. The handler only sets a flag; at the next optimiser-step boundary all
ranks agree on it (one boolean all-reduce), save `checkpoints/last.ckpt` together, then the
job is requeued and every rank exits:
- under hydra-submitit (`launcher=slurm|local`) the signal handler that submitit installed
  is called on rank 0: it re-pickles the job (counting time-outs against
  `hydra.launcher.max_num_timeout`) and runs `scontrol requeue`;
- under a plain `sbatch`/`srun` job rank 0 runs `scontrol requeue $SLURM_JOB_ID` itself,
  at most `max_requeues` times (SLURM_RESTART_COUNT);
- elsewhere it only saves and exits (code 128 + signal number); run the same command with
  `hydra.run.dir=<run folder>` to resume.
A requeued job keeps its job id, so its run folder (named by the job id, or chosen by the
sweep) is the same, and `ckpt_path=auto` resumes from `checkpoints/last.ckpt`. The metrics
of the step during which the signal came are not logged (its update is in the checkpoint).

Why not Lightning's `SLURMEnvironment(auto_requeue=True)`: it saves inside the signal
handler, at any point of a step (also inside a DDP collective), to `hpc_ckpt_*.ckpt`; it
installs nothing when submitit already handles the signal; and it does not count requeues.
Its default signal (USR1) is left alone here: do not send USR1.

`ResumeState` — Lightning's checkpoints hold model, optimiser, scheduler, loop counters and
(with a stateful train loader, see `cellsam.data.datamodule`) the data position, but not
the random number generators. This callback stores every rank's torch / CUDA / numpy /
Python generator states in each checkpoint and restores them when training restarts, so a
resumed run draws the same augmentations as an uninterrupted one. That holds for
augmentations drawn in the main process (`data.num_workers=0`); loader workers seed their
own generators when they start, so with workers the images and their order after a resume
are the same but their random augmentations are not.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

log = logging.getLogger(__name__)


def _signal_number(name: str | int) -> int:
    if isinstance(name, int):
        return name
    name = name.upper()
    return int(getattr(signal, name if name.startswith("SIG") else f"SIG{name}"))


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """`<checkpoint folder>/last.ckpt`: what the `last_checkpoint` callback writes at every
    epoch end and `ckpt_path=auto` resumes from."""
    callback = trainer.checkpoint_callback
    folder = getattr(callback, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
    return Path(folder) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` needs (`<array job>_<task>` for array jobs)."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


class Preemption(Callback):
    """Checkpoint on `signal`, then requeue (see the module docstring).

    Args:
        signal: signal name SLURM is told to send (`--signal=<name>@<seconds>`); hydra-submitit
            sends USR2 (or $SUBMITIT_PREEMPT_SIGNAL).
        requeue: requeue the SLURM job after saving (False: save and exit only).
        max_requeues: plain `sbatch` jobs only (submitit counts its own): no requeue once
            SLURM_RESTART_COUNT reaches this.
    """

    def __init__(self, signal: str | int = "USR2", requeue: bool = True,
                 max_requeues: int = 20) -> None:
        super().__init__()
        self.signum = _signal_number(signal)
        self.requeue = requeue
        self.max_requeues = max_requeues
        self.received = False
        self._previous: Any = None
        self._installed = False

    # -- signal plumbing ------------------------------------------------------------------
    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._installed:
            self.received = True  # acted on at the next step boundary, not in the handler
            return
        # Left installed after training (Lightning's teardown puts back the handlers it found
        # when fit started): behave like the handler that was there before.
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(self.signum)
        while isinstance(getattr(previous, "__self__", None), Preemption):
            previous = previous.__self__._previous  # an earlier fit's leftover handler
        self._previous = previous
        self.received = False
        signal.signal(self.signum, self._handler)
        self._installed = True

    def _restore(self) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            previous = self._previous if self._previous is not None else signal.SIG_DFL
            signal.signal(self.signum, previous)
            self._installed = False

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        self._restore()

    # -- acting on it ---------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        accumulate = max(1, int(trainer.accumulate_grad_batches))
        last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if (batch_idx + 1) % accumulate and not last:
            return  # mid-accumulation: the summed gradients are not in a checkpoint
        if not trainer.strategy.reduce_boolean_decision(self.received, all=False):
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        log.warning("signal %d: saved %s at global step %d", self.signum, path, trainer.global_step)
        outcome: tuple[Any, BaseException | None] = (128 + self.signum, None)
        if trainer.is_global_zero and self.requeue:
            try:
                outcome = (self._requeue(), None)
            except SystemExit as done:  # submitit's handler exits after requeueing
                outcome = (done.code, None)
            except Exception as err:  # e.g. submitit: "timed-out too many times"
                outcome = (1, err)
        # Every rank waits for rank 0's requeue, then leaves with its exit code.
        exit_code, _ = trainer.strategy.broadcast((outcome[0], None), src=0)
        self._restore()
        if outcome[1] is not None:
            raise outcome[1]
        raise SystemExit(exit_code)

    def _requeue(self) -> Any:
        """Requeue this job; returns the exit code. Runs on global rank 0 only."""
        previous = self._previous
        if callable(previous):
            # hydra-submitit: submitit's own checkpoint-and-requeue handler (rank 0 only).
            previous(self.signum, None)
            return 0
        job = slurm_job_id()
        if job is None:
            log.warning("not under SLURM: checkpoint saved, not requeued; rerun the same command "
                        "with hydra.run.dir=<this run folder> to resume")
            return 128 + self.signum
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if restarts >= self.max_requeues:
            log.warning("SLURM job %s restarted %d times (max_requeues): not requeued",
                        job, restarts)
            return 128 + self.signum
        result = subprocess.run(["scontrol", "requeue", job], check=False)
        log.warning("scontrol requeue %s -> exit %d", job, result.returncode)
        return 0


def _rng_states() -> dict[str, Any]:
    """The global generators' states as tensors and plain values (Lightning loads checkpoints
    with `weights_only=True`, which refuses numpy arrays)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (global generator)
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],  # noqa: NPY002
                         n["has_gauss"], n["gauss"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


class ResumeState(Callback):
    """Every rank's random generator states in each checkpoint, restored on resume."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        # Called on every rank while a checkpoint is written (rank 0 writes the file).
        states = _rng_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)
            return {"rng": gathered}
        return {"rng": [states]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("rng") or []
        if not ranks:
            return
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        if len(ranks) != world:
            log.warning("checkpoint has random states of %d ranks, this run has a different "
                        "world size: resumed random numbers will differ", len(ranks))
        self._pending = ranks[rank % len(ranks)]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the train loader's iterator was rebuilt (which draws random numbers) and
        # before the first batch is drawn: the same point the states were saved at.
        if self._pending is not None:
            _set_rng_states(self._pending)
            self._pending = None
