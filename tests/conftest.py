"""Shared fixtures: the real data folder, a small synthetic dataset, tiny models."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_data_dir() -> Path | None:
    """`../shared/data` (or $CELLSAM_SHARED_DATA) if present, else None."""
    path = Path(os.environ.get("CELLSAM_SHARED_DATA", ROOT.parent / "shared" / "data"))
    return path if path.is_dir() else None


def count_calls(monkeypatch, obj, name: str) -> list[int]:
    """Wrap `obj.name` so that each call adds 1 to the returned one-element counter."""
    calls = [0]
    inner = getattr(obj, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return inner(*args, **kwargs)

    monkeypatch.setattr(obj, name, counted)
    return calls


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data folder ../shared/data not found (set CELLSAM_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset in the project format (train 8 / val 4 / test 4)."""
    from cellsam.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("synthetic") / "synthetic"
    generate_dataset(out, {"train": 8, "val": 4, "test": 4}, cells=(5, 20), seed=1, progress=False)
    return out


@pytest.fixture()
def tiny_model():
    from cellsam.models.cellsam import build_cellsam

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_cellsam(
            sam={"variant": "tiny", "checkpoint": None},
            finder={
                "hidden_dim": 32,
                "ffn_dim": 64,
                "num_heads": 4,
                "num_encoder_layers": 1,
                "num_decoder_layers": 2,
                "num_queries": 64,
            },
        )
