"""The real configs compose for every stage x data option, with the values users rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from cellsam.utils.resolvers import register_resolvers

CONF = Path(__file__).resolve().parents[2] / "conf"
DATA_OPTIONS = sorted(p.stem for p in (CONF / "data").glob("*.yaml") if p.stem != "base")
STAGES = ["finder", "sam"]


def _compose(config_name: str, overrides: list[str]):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


def _resolve(cfg):
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    out = {
        k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
        for k in cfg
        if k not in ("hydra", "paths")
    }
    out["hydra"] = {"run": {"dir": cfg.hydra.run.dir}}
    return out


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("data", DATA_OPTIONS)
def test_every_stage_and_dataset_composes(stage, data, tmp_path):
    overrides = [f"stage={stage}", f"data={data}", f"hydra.run.dir={tmp_path}"]
    if stage == "sam":
        overrides.append("finder_ckpt=/some/stage1.ckpt")
    cfg = _compose("train", overrides)
    out = _resolve(cfg)
    assert out["stage"]["name"] == stage
    assert out["data"]["datasets"], f"data={data} lists no dataset"
    for name, entry in out["data"]["datasets"].items():
        assert entry["path"], name
    target = out["stage"]["module"]["_target_"]
    assert target.endswith("FinderModule" if stage == "finder" else "SamModule")
    assert out["callbacks"]["model_checkpoint"]["monitor"] == out["stage"]["monitor"]


def test_stage_values_from_reference(tmp_path):
    cfg = _resolve(_compose("train", ["stage=finder", "model=paper", f"hydra.run.dir={tmp_path}"]))
    module = cfg["stage"]["module"]
    assert (module["lr"], module["lr_trunk"], module["weight_decay"]) == (1e-4, 1e-5, 1e-4)
    assert module["loss_weights"] == {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    assert cfg["trainer"]["gradient_clip_val"] == 0.1
    finder = cfg["model"]["finder"]
    assert (finder["num_queries"], finder["hidden_dim"], finder["ffn_dim"]) == (3500, 256, 1024)
    assert (finder["num_encoder_layers"], finder["num_decoder_layers"]) == (6, 6)
    assert cfg["model"]["sam"]["variant"] == "vit_b" and cfg["model"]["shared_trunk"] is True
    released = _resolve(_compose("train", ["model=released", f"hydra.run.dir={tmp_path}"]))
    assert released["model"]["shared_trunk"] is False
    sam = _resolve(_compose("train", ["stage=sam", "finder_ckpt=x", f"hydra.run.dir={tmp_path}"]))
    assert sam["stage"]["module"]["trainable"] == ["neck"]
    assert sam["trainer"]["gradient_clip_val"] is None


def test_required_values_are_marked():
    cfg = _compose("train", ["stage=sam"])
    assert OmegaConf.is_missing(cfg, "finder_ckpt")
    ev = _compose("eval", [])
    assert OmegaConf.is_missing(ev, "ckpt")


def test_run_dirs_name_stage_and_data_and_never_collide():
    cfg = _compose("train", ["stage=finder", "data=synthetic"])
    from cellsam.utils import resolvers

    run_dir = _resolve(cfg)["hydra"]["run"]["dir"]
    assert "/finder/synthetic/" in run_dir
    # Two processes started in the same second get different ids (microseconds + pid).
    resolvers.run_id.cache_clear()
    a = resolvers.run_id()
    resolvers.run_id.cache_clear()
    b = resolvers.run_id()
    assert a != b
    assert resolvers.run_id() == b  # stable within a process


@pytest.mark.parametrize(("spec", "folder"), [("images/*.tif", "images"), ("plates/a1.png", "a1"),
                                              ("data/raw/", "raw")])
def test_predict_and_eval_run_dirs(spec, folder):
    out = _resolve(_compose("predict", ["ckpt=x", f"input={spec}", "output=o"]))
    assert f"/predict/{folder}/" in out["hydra"]["run"]["dir"]
    assert "stage" not in out  # no invented stage block just to name folders
    out = _resolve(_compose("eval", ["ckpt=x", "data=synthetic"]))
    assert "/eval/synthetic/" in out["hydra"]["run"]["dir"] and "stage" not in out


def test_folder_scoring_runs_are_named_after_the_predictions():
    from hydra.core.hydra_config import HydraConfig

    cfg = _compose("eval", ["pred_dir=/x/cellpose_out/", "gt_dir=/y/labels"])
    HydraConfig.instance().set_config(cfg)
    assert "/eval/cellpose_out/" in cfg.hydra.run.dir  # not the unused default data's name
    assert OmegaConf.is_missing(cfg, "ckpt")  # not needed in this mode
    assert OmegaConf.to_container(cfg.bootstrap) == {"n": 2000, "seed": 0, "level": 0.95}


def test_slurm_run_id(monkeypatch):
    from cellsam.utils import resolvers

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    resolvers.run_id.cache_clear()
    assert resolvers.run_id() == "slurm-4242"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    resolvers.run_id.cache_clear()
    assert resolvers.run_id() == "slurm-4240_3"
    resolvers.run_id.cache_clear()


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb"])
def test_trainer_and_logger_options(trainer, logger, tmp_path):
    cfg = _resolve(
        _compose("train", [f"trainer={trainer}", f"logger={logger}", f"hydra.run.dir={tmp_path}"])
    )
    assert "csv" in cfg["logger"]  # CSV always
    if logger == "wandb":
        assert cfg["logger"]["wandb"]["offline"] is True
    if trainer == "gpu":
        assert cfg["trainer"]["precision"] == "bf16-mixed"
    if trainer == "ddp":
        assert cfg["trainer"]["strategy"] == "ddp"


def test_cli_prints_composed_config():
    import subprocess
    import sys

    root = CONF.parent
    out = subprocess.run(
        [sys.executable, str(root / "train.py"), "--cfg", "job", "stage=finder", "data=synthetic"],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    job = OmegaConf.create(out.stdout)
    assert job.stage.name == "finder"
    assert job.model._target_ == "cellsam.models.cellsam.build_cellsam"
    assert "synthetic" in job.data.datasets


def test_several_datasets_compose_and_name_the_run_dir():
    cfg = _compose("eval", ["data=[dsb2018,cellpose]", "ckpt=x"])
    out = _resolve(cfg)
    assert list(out["data"]["datasets"]) == ["dsb2018", "cellpose"]
    assert "/eval/dsb2018+cellpose/" in out["hydra"]["run"]["dir"]
