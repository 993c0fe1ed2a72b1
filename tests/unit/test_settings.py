"""`resolve_settings`: one precedence rule, and every path (eval, predict, the metrics
callback) gets the same settings from the same inputs."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from fake_checkpoints import write_checkpoint
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from cellsam.inference.settings import PRESETS, InferenceSettings, resolve_settings

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_precedence_preset_checkpoint_config_explicit():
    ckpt = {"preset": "release", "box_threshold": 0.1, "min_area": 7, "tile_size": 256}
    config = {"box_threshold": 0.2, "min_area": None, "clahe": False}
    explicit = {"box_threshold": 0.3}
    s = resolve_settings(ckpt, config, explicit)
    assert s.preset == "release" and s.kmeans_adjust and s.mask_threshold == 0.4  # preset
    assert (s.min_area, s.tile_size) == (7, 256)  # checkpoint; config's null does not unset
    assert s.clahe is False  # config
    assert s.box_threshold == 0.3  # explicit beats all
    # the highest source naming a preset picks the base, the other values stay
    s = resolve_settings(ckpt, {"preset": "paper"})
    assert (s.preset, s.kmeans_adjust, s.mask_threshold, s.min_area) == ("paper", False, 0.5, 7)
    assert resolve_settings(ckpt, preset="paper").preset == "paper"
    assert resolve_settings() == PRESETS["paper"]
    # "none" sets a None-valued option explicitly over a checkpoint's value
    s = resolve_settings({"duplicate_overlap": 0.5}, {"duplicate_overlap": "none"})
    assert s.duplicate_overlap is None
    # ... but where None is not a value, "none" is the option's own word (SAC: no negatives)
    s = resolve_settings({"prompt_negatives": "both"}, {"prompt_negatives": "none"},
                         {"max_detections": "off"})
    assert (s.prompt_negatives, s.max_detections) == ("none", None)


def test_unknown_keys():
    # old checkpoints may hold keys of earlier versions: ignored
    assert resolve_settings({"comment": "x", "box_threshold": 0.2}).box_threshold == 0.2
    # a typo in the config or the arguments is refused, naming the key
    with pytest.raises(ValueError, match="config: unknown inference setting 'box_treshold'"):
        resolve_settings(config={"box_treshold": 0.2})
    with pytest.raises(ValueError, match="arguments: unknown inference setting 'x'"):
        resolve_settings(explicit={"x": 1})


@pytest.mark.parametrize("preset", ["paper", "release"])
def test_yaml_blocks_choose_a_preset_and_hold_no_values(preset):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("predict", overrides=[f"inference={preset}", "ckpt=x", "input=x",
                                            "output=x"])
    block = OmegaConf.to_container(cfg.inference)
    assert set(block) == {f.name for f in fields(InferenceSettings)}, "yaml/dataclass keys differ"
    assert {k for k, v in block.items() if v is not None} == {"preset"}
    assert resolve_settings(config=block) == PRESETS[preset]


def test_eval_predict_and_callback_resolve_identically(tmp_path):
    from cellsam.callbacks.segmentation_metrics import SegmentationMetrics
    from cellsam.inference.predictor import CellSAMPredictor
    from cellsam.tasks.evaluate import load_predictor

    run_block = {"preset": "release", "box_threshold": 0.25, "duplicate_overlap": 0.5,
                 "min_area": 9}
    config = {"preset": None, "box_threshold": None, "iou_threshold": 0.3, "min_area": 12}
    ckpt = write_checkpoint(tmp_path / "s2.ckpt", run_block)
    expected = resolve_settings(run_block, config)
    assert (expected.preset, expected.box_threshold, expected.iou_threshold,
            expected.min_area, expected.duplicate_overlap) == ("release", 0.25, 0.3, 12, 0.5)

    evaluated, _ = load_predictor(ckpt, config, device="cpu")
    predicted = CellSAMPredictor.from_checkpoint(ckpt, device="cpu", config=config)

    class Module:  # what the callback reads from a training system
        def inference_settings(self):
            return dict(run_block)

    during_training = SegmentationMetrics(inference=config).settings(Module())
    assert evaluated.settings == predicted.settings == during_training == expected
