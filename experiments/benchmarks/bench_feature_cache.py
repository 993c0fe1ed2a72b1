"""Epoch time with and without the frozen-trunk feature cache, in one process.

A stage's training steps over `--tiles` tiles of a converted dataset (default: the DSB
tiles of `data/dsb2018_fixed`), LiteMedSAM's packaged weights, batch 2, the dsb_lite
settings of the stage (`--stage finder|sam`):
  - uncached: every step runs the frozen trunk on the images (the path without the cache);
  - build: computing the cache once (what the first epoch adds);
  - cached: every step reads the trunk's features from the memory-mapped cache.
Prints seconds per epoch and the ratio uncached / cached.

    python experiments/benchmarks/bench_feature_cache.py --stage sam --tiles 16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))


def module_for(stage: str):
    from conf_values import stage_module_args

    from cellsam.models.cellsam import build_cellsam
    from cellsam.systems.finder_module import FinderModule
    from cellsam.systems.sam_module import SamModule

    exp = OmegaConf.load(ROOT / "conf" / "experiment" / "dsb_lite.yaml")
    finder = {**OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "paper.yaml"))[
        "finder"], **OmegaConf.to_container(exp.model.finder)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_cellsam(sam={"variant": "lite_medsam", "checkpoint": "packaged"},
                              finder=finder)
    if stage == "finder":
        args = {k: v for k, v in OmegaConf.to_container(exp.stage.module).items()}
        module = FinderModule(model, **stage_module_args("finder", **args))
    else:
        sam_exp = OmegaConf.load(ROOT / "conf" / "experiment" / "dsb_lite_sam.yaml")
        module = SamModule(model, **stage_module_args(
            "sam", **OmegaConf.to_container(sam_exp.stage.module)))
    module.log = lambda *a, **k: None
    return module


def epoch(module, dataset, batch: int) -> float:
    from cellsam.data.datamodule import collate

    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], 1e-4)
    module.train()
    start = time.perf_counter()
    for s in range(0, len(dataset), batch):
        b = collate([dataset[i] for i in range(s, min(s + batch, len(dataset)))])
        loss = module.training_step(b, s)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "dsb2018_fixed")
    ap.add_argument("--stage", choices=["finder", "sam"], default="sam")
    ap.add_argument("--tiles", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    from cellsam.data.datamodule import CellSplitDataset
    from cellsam.data.feature_cache import (
        CachedSplitDataset,
        build_feature_store,
        trunk_fingerprint,
    )
    from cellsam.data.format import open_split

    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: no converted dataset (see conf/experiment/dsb_lite.yaml)")
    torch.manual_seed(0)
    module = module_for(args.stage)
    model = module.model
    data = open_split(args.data, "train")
    dataset = CellSplitDataset(data, data.name, model.image_size, None,
                               list(range(min(args.tiles, len(data)))))
    uncached = epoch(module, dataset, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model.eval()
        with torch.no_grad():
            store = build_feature_store(module.trunk_features, dataset, [0], Path(tmp),
                                        fingerprint=trunk_fingerprint(model),
                                        input_size=model.image_size, batch_size=1)
        build = time.perf_counter() - start
        cached = epoch(module, CachedSplitDataset(dataset, store, train=True), args.batch)
    n = len(dataset)
    print(f"stage {args.stage}, {n} tiles, batch {args.batch}, {torch.get_num_threads()} threads")
    print(f"  uncached epoch  {uncached:8.1f} s  ({uncached / n:.2f} s/tile)")
    print(f"  cache build     {build:8.1f} s  ({build / n:.2f} s/tile, once)")
    print(f"  cached epoch    {cached:8.1f} s  ({cached / n:.2f} s/tile)")
    print(f"  epoch speed-up  {uncached / cached:8.2f}x; over E epochs uncached/cached = "
          f"E*{uncached:.0f} / ({build:.0f} + E*{cached:.0f})")


if __name__ == "__main__":
    main()
