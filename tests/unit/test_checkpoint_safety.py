"""Loading a checkpoint never runs code: a crafted file is refused through every path
(predict, eval, stage 2's finder_ckpt) and the command it carries never executes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from fake_checkpoints import write_checkpoint

from cellsam.utils.checkpoint import CheckpointError, load_model, read_checkpoint


class _RunsCode:
    """Unpickling this calls os.system (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code_ran"
    good = torch.load(write_checkpoint(tmp_path / "good.ckpt"), weights_only=True)
    good["cellsam"]["config"]["payload"] = _RunsCode(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(good, path)
    return path, marker


def test_every_loading_path_refuses_a_checkpoint_that_would_run_code(tmp_path):
    from omegaconf import OmegaConf

    from cellsam.inference.predictor import CellSAMPredictor
    from cellsam.tasks.evaluate import load_predictor
    from cellsam.tasks.train import _model_and_config

    path, marker = _malicious(tmp_path)
    message = r"evil\.ckpt: refused, the file holds objects other than tensors"
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)
    with pytest.raises(CheckpointError, match=message):
        CellSAMPredictor.from_checkpoint(path, device="cpu")
    with pytest.raises(CheckpointError, match=message):
        load_predictor(path, {}, device="cpu")
    cfg = OmegaConf.create({"stage": {"name": "sam"}, "finder_ckpt": str(path), "model": {}})
    with pytest.raises(CheckpointError, match=message):
        _model_and_config(cfg)  # what train.py stage=sam finder_ckpt=... runs first
    assert not marker.exists()
    # the same object unpickled without the guard does run: the test's payload is real
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_our_checkpoints_still_load(tmp_path):
    model, meta = load_model(write_checkpoint(tmp_path / "s2.ckpt", {"box_threshold": 0.3}))
    assert meta["stage"] == "sam" and meta["inference"] == {"box_threshold": 0.3}
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_checkpoint_save_that_fails_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    from cellsam.utils.checkpoint import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def dies_midway(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"truncated")
        raise KeyboardInterrupt  # killed during the write

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
