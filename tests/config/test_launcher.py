"""Launchers, checked without a cluster.

`launcher=slurm` composes with the resource fields a user sets, ties tasks and GPUs per node
and the node count to the trainer, and — through the real hydra-submitit and submitit code
with fake `sbatch`/`srun` programs on PATH — writes the sbatch script a cluster would get.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from cellsam.utils.resolvers import register_resolvers

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
USER = ["hydra.launcher.partition=gpu", "hydra.launcher.account=lab",
        "hydra.launcher.timeout_min=90", "hydra.launcher.mem_gb=64",
        "hydra.launcher.cpus_per_task=6", "hydra.launcher.signal_delay_s=180",
        "hydra.launcher.max_num_timeout=5"]


def _launcher(overrides: list[str]) -> dict:
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    return cfg


def test_slurm_launcher_takes_resources_from_config():
    cfg = _launcher(["launcher=slurm", "stage=finder", "trainer.devices=8",
                     "trainer.num_nodes=2", *USER])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 8, 8)
    assert (launcher["partition"], launcher["account"]) == ("gpu", "lab")
    assert (launcher["timeout_min"], launcher["mem_gb"], launcher["cpus_per_task"]) == (90, 64, 6)
    assert (launcher["signal_delay_s"], launcher["max_num_timeout"]) == (180, 5)
    assert launcher["name"] == "cellsam-finder"
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "gpu"  # trainer=ddp


def test_slurm_defaults_leave_site_choices_to_the_cluster():
    cfg = _launcher(["launcher=slurm"])
    launcher = cfg.hydra.launcher
    assert launcher.partition is None and launcher.account is None  # sbatch's defaults
    assert launcher.tasks_per_node == launcher.gpus_per_node == cfg.trainer.devices
    assert launcher.nodes == cfg.trainer.num_nodes == 1


def test_local_launcher_ties_tasks_to_devices():
    cfg = _launcher(["launcher=local", "trainer.devices=2"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("LocalLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (1, 2, 2)


def test_preemption_signal_is_submitits():
    """The callback listens for the signal submitit asks SLURM to send."""
    from submitit.core.job_environment import JobEnvironment

    cfg = _launcher([])
    assert cfg.callbacks.preemption.signal == JobEnvironment.USR_SIG


DRIVER = """
import sys
import submitit
from hydra.core.utils import JobReturn, JobStatus


def finished(self):  # no cluster runs the jobs: report them done
    return [JobReturn(status=JobStatus.COMPLETED, _return_value=None)]


submitit.core.core.Job.results = finished
from cellsam.cli import train_main

sys.argv = ["train.py", *sys.argv[1:]]
train_main()
"""


def _fake_programs(folder: Path, capture: Path) -> None:
    folder.mkdir()
    programs = {
        "sbatch": f'#!/bin/sh\ncp "$1" "{capture}/"\necho "Submitted batch job 4242"\n',
        "srun": "#!/bin/sh\nexit 0\n",
    }
    for name, text in programs.items():
        path = folder / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell scripts")
def test_slurm_multirun_writes_the_sbatch_script(tmp_path):
    """`python train.py -m launcher=slurm ...` through hydra-submitit and submitit, with fake
    sbatch/srun: one array job of two runs, resources from config, USR2 before the limit."""
    capture = tmp_path / "submitted"
    capture.mkdir()
    _fake_programs(tmp_path / "bin", capture)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
           "PROJECT_ROOT": str(ROOT)}
    args = ["-m", "launcher=slurm", "stage=finder", "data=generalist",
            "trainer.devices=8", "trainer.num_nodes=2", *USER, f"paths.log_dir={tmp_path}",
            "stage.module.lr=1e-4,2e-4"]
    out = subprocess.run([sys.executable, str(driver), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    scripts = list(capture.iterdir())
    assert len(scripts) == 1, "one sbatch array for the sweep"
    lines = scripts[0].read_text().splitlines()
    sbatch = {line.split("=", 1)[0][len("#SBATCH "):]: line.split("=", 1)[1]
              for line in lines if line.startswith("#SBATCH --") and "=" in line}
    assert sbatch["--nodes"] == "2"
    assert sbatch["--ntasks-per-node"] == "8"      # one task per GPU: Lightning's DDP ranks
    assert sbatch["--gpus-per-node"] == "8"
    assert sbatch["--cpus-per-task"] == "6"
    assert sbatch["--mem"] == "64GB"
    assert sbatch["--time"] == "90"
    assert sbatch["--partition"] == "gpu" and sbatch["--account"] == "lab"
    assert sbatch["--signal"] == "USR2@180"
    assert sbatch["--array"] == "0-1%2"
    assert sbatch["--job-name"] == "cellsam-finder"
    assert "#SBATCH --requeue" in lines
    assert any(line.startswith("srun ") for line in lines)

    from submitit.core.utils import DelayedSubmission

    pickles = sorted(tmp_path.glob("multirun/finder/*/.submitit/4242_*/*_submitted.pkl"))
    assert len(pickles) == 2
    jobs = [DelayedSubmission.load(p) for p in pickles]
    assert all(j._timeout_countdown == 5 for j in jobs)  # max_num_timeout
    overrides = sorted(next(o for o in j.args[0] if o.startswith("stage.module.lr="))
                       for j in jobs)
    assert overrides == ["stage.module.lr=0.0001", "stage.module.lr=0.0002"]


def test_sbatch_template_passes_the_allocation_to_the_trainer(tmp_path):
    """slurm/train.sbatch run by bash with a fake `srun`: the trainer gets the allocation's
    tasks per node and node count, and the user's overrides; the resulting command composes."""
    (tmp_path / "bin").mkdir()
    srun = tmp_path / "bin" / "srun"
    srun.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/srun_args"\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
           "CELLSAM_VENV": str(venv), "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_ID": "99",
           "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NTASKS_PER_NODE": "4", "SLURM_NNODES": "2",
           "SLURM_CPUS_PER_TASK": "6"}
    out = subprocess.run(["bash", str(ROOT / "slurm" / "train.sbatch"), "stage=finder",
                          "data=generalist"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    args = (tmp_path / "srun_args").read_text().split("\n")[:-1]
    assert args[:3] == ["--kill-on-bad-exit=1", "python", "train.py"]
    overrides = args[3:]
    assert overrides == ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                         "data.num_workers=5", "stage=finder", "data=generalist"]
    cfg = _launcher(overrides)
    assert (cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.strategy) == (4, 2, "ddp")
    text = (ROOT / "slurm" / "train.sbatch").read_text()
    assert "#SBATCH --signal=USR2@" in text and "#SBATCH --requeue" in text
