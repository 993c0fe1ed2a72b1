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


def make_matcher(**overrides):
    """`HungarianMatcher` as `conf/stage/finder.yaml` sets it, `overrides` on top."""
    from cellsam.models.finder.matcher import HungarianMatcher
    m = stage_module_args("finder")
    return HungarianMatcher(**{**m["matcher_costs"], "focal_alpha": m["focal_alpha"],
                               "focal_gamma": m["focal_gamma"], "solver": m["matcher_solver"],
                               **overrides})


def make_criterion(weight_dict: dict, **overrides):
    """`SetCriterion` with finder.yaml's matcher and settings (`overrides` on the latter)."""
    from cellsam.models.finder.criterion import SetCriterion
    m = stage_module_args("finder")
    keys = ("focal_alpha", "focal_gamma", "aux_layer_matches_per_cell", "iou_aware_class")
    return SetCriterion(make_matcher(), weight_dict, **{**{k: m[k] for k in keys}, **overrides})


def augment_block(**overrides) -> dict:
    """`data.augment` of `conf/data/base.yaml` with `overrides` on top."""
    base = OmegaConf.to_container(OmegaConf.load(CONF / "data" / "base.yaml"))
    return {**base["augment"], **overrides}


NO_AUGMENT = augment_block(hflip=0, vflip=0, rot90=False, zoom_p=0, gamma_p=0, noise_p=0,
                           blur_p=0)
