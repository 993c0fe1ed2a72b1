"""The training-throughput benchmark runs end to end on the real configs (one step)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_train_prints_throughput_and_loader_ratio(tmp_path, capsys) -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_train", ROOT / "experiments" / "benchmarks" / "bench_train.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = f"data.datasets.synthetic.path={tmp_path / 'synthetic'}"
    size = "data.datasets.synthetic.generate.n_images={train:4,val:2,test:2}"
    bench.main(["--overrides", "experiment=quickstart", data, size, "--steps", "2",
                "--warmup", "1", "--batch", "2", "--loader", "--loader-items", "4"])
    out = capsys.readouterr().out
    assert "256 px input, 100 queries" in out
    rate = re.search(r"precision   32: +[\d.]+ ms/step, +([\d.]+) images/s", out)
    assert rate and float(rate.group(1)) > 0
    loader = re.search(r"loader .*: ([\d.]+) items/s .* ([\d.]+) at the stored size", out)
    assert loader and float(loader.group(1)) > 0 and float(loader.group(2)) > 0


def test_step_flops_count_forward_and_backward(tmp_path) -> None:
    import torch
    from hydra.utils import instantiate
    from torch.utils.flop_counter import FlopCounterMode

    spec = importlib.util.spec_from_file_location(
        "bench_train", ROOT / "experiments" / "benchmarks" / "bench_train.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = bench.compose_config(["experiment=quickstart"])
    model = instantiate(cfg.model, _convert_="all")
    criterion = bench.build_module(cfg.stage.module, model, {}).criterion
    flops = bench.count_step_flops(model, criterion, cells=10)
    size = model.image_size
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.trunk(torch.rand(1, 3, size, size))
    forward = counter.get_total_flops()
    # Backward costs two forwards per layer, except the patch embedding's input gradient
    # (the image needs none): just under 3x the forward.
    assert 2.8 * forward < flops["trunk"] <= 3 * forward
    assert flops["finder"] > 0 and flops["losses"] >= 0
