"""The paper-reproduction experiments compose, are headed by their command, and chain:
stage 2 reads the checkpoint stage 1 writes, the evaluations read stage 2's."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from cellsam.utils.resolvers import register_resolvers

CONF = Path(__file__).resolve().parents[2] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")
                     if not p.stem.startswith("quickstart"))
PAPER = ["paper_finder", "paper_sam", "generalist_finder", "generalist_sam",
         "specialists_finder", "specialists_finder_small", "specialists_sam",
         "livecell_zero_shot", "specialist_vs_generalist"]


def _command(name: str) -> str:
    lines = (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_", name
    return lines[1].removeprefix("# ")


def _compose(name: str, overrides: list[str] = ()):
    script = "eval" if _command(name).startswith("python eval.py") else "train"
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(script, overrides=[f"experiment={name}", *overrides],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_paper_experiments_exist():
    assert set(PAPER) <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_is_headed_by_its_command_and_composes(name):
    command = _command(name)
    assert command.startswith(("python train.py", "python eval.py")), command
    assert f"experiment={name}" in command
    cfg = _compose(name)
    body = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
    OmegaConf.to_container(OmegaConf.create(body))  # no syntax errors left
    if name.startswith("specialist"):  # the sweeps over datasets
        assert "-m " in command and cfg.hydra.sweeper.params.data, name


def test_paper_stage1_settings():
    cfg = _compose("specialists_finder_small")
    assert cfg.model.finder.num_queries == 3500 and cfg.model.sam.variant == "vit_b"
    assert (cfg.trainer.devices, cfg.trainer.num_nodes, cfg.data.batch_size) == (8, 2, 4)
    assert (cfg.trainer.max_epochs, cfg.stage.module.lr_drop) == (1000, 800)
    assert (cfg.stage.module.lr, cfg.stage.module.lr_trunk) == (1e-4, 1e-5)
    assert cfg.trainer.gradient_clip_val == 0.1 and cfg.trainer.strategy == "ddp"
    assert cfg.hydra.sweeper.params.data == "brifiseg,yeastnet,yeaz"
    big = _compose("specialists_finder")
    assert (big.trainer.max_epochs, big.stage.module.lr_drop) == (500, 400)
    datasets = set(big.hydra.sweeper.params.data.split(",")) | {"brifiseg", "yeastnet", "yeaz"}
    assert datasets == set(_compose("specialists_sam").hydra.sweeper.params.data.split(","))
    assert len(datasets) == 9


def test_stages_and_evaluations_chain(tmp_path):
    log = f"paths.log_dir={tmp_path}"
    finder = _compose("generalist_finder", [log])
    assert HydraConfig.get().runtime.choices.data == "generalist"
    finder_dir = finder.hydra.run.dir
    assert finder_dir == f"{tmp_path}/paper/finder/generalist"
    sam = _compose("generalist_sam", [log])
    assert sam.stage.name == "sam"
    assert sam.finder_ckpt == f"{finder_dir}/checkpoints/last.ckpt"
    sam_dir = sam.hydra.run.dir
    assert sam_dir == f"{tmp_path}/paper/sam/generalist"
    live = _compose("livecell_zero_shot", [log])
    assert live.ckpt == f"{sam_dir}/checkpoints/last.ckpt"
    assert list(live.data.datasets) == ["livecell"]
    for kind, folder in [("specialist", "tissuenet"), ("generalist", "generalist")]:
        cmp = _compose("specialist_vs_generalist", [log, "data=tissuenet", f"trained_on={kind}"])
        assert cmp.ckpt == f"{tmp_path}/paper/sam/{folder}/checkpoints/last.ckpt"
        assert cmp.paper_variant == kind


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "sweep").glob("*.yaml")))
def test_sweeps_name_existing_keys(name):
    text = (CONF / "sweep" / f"{name}.yaml").read_text()
    stage = "sam" if "stage=sam" in text else "finder"
    overrides = [f"sweep={name}", f"stage={stage}"] + (["finder_ckpt=x"] if stage == "sam" else [])
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params
    for key, values in params.items():
        assert OmegaConf.select(cfg, key) is not None, f"{name}: {key} is not a config key"
        assert len(str(values).split(",")) >= 2
