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


def matcher_args(**overrides) -> dict:
    """`HungarianMatcher`'s arguments as `conf/stage/finder.yaml` sets them."""
    m = stage_module_args("finder")
    return {**m["matcher_costs"], "focal_alpha": m["focal_alpha"],
            "focal_gamma": m["focal_gamma"], "solver": m["matcher_solver"], **overrides}


def criterion_args(**overrides) -> dict:
    """`SetCriterion`'s arguments after the matcher and loss weights, as in finder.yaml."""
    m = stage_module_args("finder")
    keys = ("focal_alpha", "focal_gamma", "aux_layer_matches_per_cell", "iou_aware_class")
    return {**{k: m[k] for k in keys}, **overrides}


def make_matcher(**overrides):
    from cellsam.models.finder.matcher import HungarianMatcher
    return HungarianMatcher(**matcher_args(**overrides))


def make_criterion(weight_dict: dict, **overrides):
    """`SetCriterion` with finder.yaml's matcher and settings (`overrides` on the latter)."""
    from cellsam.models.finder.criterion import SetCriterion
    return SetCriterion(make_matcher(), weight_dict, **criterion_args(**overrides))


def augment_block(**overrides) -> dict:
    """`data.augment` of `conf/data/base.yaml` with `overrides` on top."""
    base = OmegaConf.to_container(OmegaConf.load(CONF / "data" / "base.yaml"))
    return {**base["augment"], **overrides}


NO_AUGMENT = augment_block(hflip=0, vflip=0, rot90=False, zoom_p=0, gamma_p=0, noise_p=0,
                           blur_p=0)
