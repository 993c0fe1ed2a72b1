"""The SAC configs compose to what their comments say: `stage=sac` picks a SAC model, the
real-data experiment uses LiteMedSAM's packaged weights, and each ablation file changes
only its own keys (tests/config/test_experiments.py checks their command lines)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from cellsam.utils.resolvers import register_resolvers

CONF = Path(__file__).resolve().parents[2] / "conf"


def _compose(script: str, overrides: list[str]) -> dict:
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(script, overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=False)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_stage_sac_defaults_to_a_sac_model():
    cfg = _compose("train", ["stage=sac"])
    assert cfg["model"]["_target_"] == "cellsam.models.sac.build_sac"
    assert cfg["stage"]["module"]["_target_"] == "cellsam.systems.sac_module.SacModule"
    assert cfg["stage"]["monitor"] == "val/all/mask_iou"
    assert "segmentation_metrics" in cfg["callbacks"]
    lite = _compose("train", ["stage=sac", "model=sac_lite"])["model"]
    assert (lite["sam"]["variant"], lite["sam"]["checkpoint"]) == ("lite_medsam", "packaged")


ABLATIONS = {
    "dsb_lite_sac_rank16": {"model.lora.rank": 16, "model.lora.alpha": 16.0},
    "dsb_lite_sac_decoder_only": {"model.lora": None,
                                  "stage.module.trainable": ["mask_decoder"]},
    "dsb_lite_sac_prompter_only": {"stage.module.train_sam": False,
                                   "stage.monitor": "val/all/fg_dice"},
    "dsb_lite_sac_no_negatives": {"stage.module.n_negative": 0,
                                  "inference.prompt_negatives": "none"},
    "dsb_lite_sac_amplified": {"stage.module.n_positive": 3, "inference.points_per_cell": 3},
    "dsb_lite_sac_no_prompts": {"stage.module.train_with_prompts": False},
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_changes_only_its_keys(name):
    main = _flat(_compose("train", ["experiment=dsb_lite_sac"]))
    assert main["model.sam.variant"] == "lite_medsam" and main["trainer.max_time"]
    assert main["stage.module.trainable"] == ["lora", "mask_decoder"]
    other = _flat(_compose("train", [f"experiment={name}"]))
    changed = {k for k in main.keys() | other.keys() if main.get(k, "-") != other.get(k, "-")}
    changed = {k for k in changed if not k.startswith("hydra.")}
    # model.lora: null removes its sub-keys
    if name == "dsb_lite_sac_decoder_only":
        changed = {k for k in changed if not k.startswith("model.lora.")} | {"model.lora"}
    assert changed == set(ABLATIONS[name])
    for key, value in ABLATIONS[name].items():
        assert other.get(key) == value, key


def test_eval_experiment_targets_the_main_run():
    cfg = _compose("eval", ["experiment=dsb_lite_sac_eval"])
    assert cfg["ckpt"].endswith("dsb_lite_sac/main/checkpoints/last.ckpt")
    assert cfg["split"] == "val" and "dsb2018_fixed" in cfg["data"]["datasets"]
