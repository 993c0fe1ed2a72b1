"""A SAC run stopped and started again in the same folder (`ckpt_path=auto`) ends with
exactly the weights of an uninterrupted run (CPU, fixed seed, augmentation on), although
its checkpoints hold only the weights that differ from the base SAM; and a resume on
another base is refused. See test_resume.py for the CellSAM stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_sac_stage import NO_AUGMENT, sac_overrides, write_base
from tiny_train import compose_in_process, model_weights

STEPS, EPOCHS = 3, 2


def _overrides(data: Path, base: Path) -> list[str]:
    return [o for o in sac_overrides(data, base, epochs=EPOCHS, steps=STEPS)
            if o not in NO_AUGMENT] + ["callbacks.segmentation_metrics=null"]


def _train(cfg):
    from cellsam.tasks.train import train

    return train(cfg)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return write_base(tmp_path_factory.mktemp("base") / "base.pth", seed=0)


@pytest.fixture(scope="module")
def reference(synthetic_dir, base, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("uninterrupted")
    _train(compose_in_process(_overrides(synthetic_dir, base), out))
    return model_weights(out / "checkpoints" / "last.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["signal", "crash"])
def test_sac_run_resumes_exactly(synthetic_dir, base, reference, tmp_path, stop):
    overrides = _overrides(synthetic_dir, base)
    kind = "SignalAtStep" if stop == "signal" else "CrashAtStep"
    stopper = [f"+callbacks.stop._target_=tiny_train.{kind}", "+callbacks.stop.step=4"]
    with pytest.raises(SystemExit if stop == "signal" else RuntimeError):
        _train(compose_in_process(overrides + stopper, tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert saved == (5 if stop == "signal" else STEPS)
    _train(compose_in_process(overrides, tmp_path))  # ckpt_path=auto: resumes
    weights = model_weights(last)
    assert weights.keys() == reference.keys()
    assert any(".lora_" in k for k in weights)
    assert not any(k.startswith("model.sam.image_encoder.blocks") and ".lora_" not in k
                   for k in weights), "base trunk weights must not be stored"
    differ = [k for k in reference if not torch.equal(weights[k], reference[k])]
    assert not differ, f"{len(differ)} tensors differ after resuming, e.g. {differ[:3]}"


@pytest.mark.slow
def test_sac_resume_refuses_another_base(synthetic_dir, base, reference, tmp_path):
    from cellsam.utils.checkpoint import CheckpointError

    first = _overrides(synthetic_dir, base)
    crash = ["+callbacks.stop._target_=tiny_train.CrashAtStep", "+callbacks.stop.step=4"]
    with pytest.raises(RuntimeError, match="killed at step 4"):
        _train(compose_in_process(first + crash, tmp_path))
    other = write_base(tmp_path / "other.pth", seed=1)
    with pytest.raises(CheckpointError, match="refusing to resume on another base"):
        _train(compose_in_process(_overrides(synthetic_dir, other), tmp_path))
