"""Values whose one home is the YAML config, read for tests that build objects directly."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"


def stage_module_args(stage: str, **overrides) -> dict:
    """The constructor arguments of a stage's LightningModule as `conf/stage/<stage>.yaml`
    sets them, with `overrides` on top."""
    module = OmegaConf.to_container(OmegaConf.load(CONF / "stage" / f"{stage}.yaml"))
    args = dict(module["stage"]["module"])
    args.pop("_target_")
    return {**args, **overrides}


def augment_block(**overrides) -> dict:
    """`data.augment` of `conf/data/base.yaml` with `overrides` on top."""
    base = OmegaConf.to_container(OmegaConf.load(CONF / "data" / "base.yaml"))
    return {**base["augment"], **overrides}


NO_AUGMENT = augment_block(hflip=0, vflip=0, rot90=False, zoom_p=0, gamma_p=0, noise_p=0,
                           blur_p=0)
