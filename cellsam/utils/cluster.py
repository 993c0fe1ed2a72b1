"""Process-group settings for jobs that a launcher started as several tasks.

- SLURM (`launcher=slurm`, or `srun` in slurm/train.sbatch): one task per GPU; Lightning's
  `SLURMEnvironment` reads the ranks from SLURM's variables: nothing to do here.
- submitit's local executor (`launcher=local` with `trainer.devices > 1`): one task per
  device too, but Lightning does not know submitit's variables; `submitit`'s own
  `TorchDistributedEnvironment` exports the standard ones (RANK, LOCAL_RANK, WORLD_SIZE,
  MASTER_ADDR, and a MASTER_PORT derived from the job id, so every task picks the same),
  and Lightning's default environment then takes each task as one rank instead of starting
  processes of its own.
"""

from __future__ import annotations

import os


def prepare_distributed_env() -> bool:
    """Export the rank variables for a multi-task submitit-local job; True if it did."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local":
        return False
    if int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) <= 1:
        return False
    from submitit.helpers import TorchDistributedEnvironment

    # Lightning picks each rank's GPU from LOCAL_RANK, so CUDA_VISIBLE_DEVICES stays as is.
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return True
