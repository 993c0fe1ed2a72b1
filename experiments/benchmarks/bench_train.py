"""Stage-1 training throughput: images per second and peak GPU memory per image.

One step is what `FinderModule.training_step` plus the optimiser do: trunk and CellFinder
forward, Hungarian matching and losses on every decoder layer, backward, gradient clipping
and an AdamW step. The model, criterion and optimiser come from the real configs
(`conf/train.yaml` composed with `--overrides`, built as `train.py` builds them); the batch
is random images with random cell boxes, so the figure is the model's, not the loader's.
`--loader` also times the training data loader of the composed data config, and compares
its photometric augmentation at the model's input size (what the data module does when it
downsizes) with the same steps at the stored size (the baseline), in the same process.
`--flops` counts the floating-point operations of one stage-1 step per image with
`torch.utils.flop_counter` on the meta device (no compute): trunk forward + backward,
CellFinder forward + backward, and the losses on real predictions; images/s x this count
against a device's peak gives the model FLOP utilisation. The counter counts matrix
products and convolutions (the usual MFU convention), not elementwise work, and the
matching is scipy's, outside torch.
`--vit-attention` also times a ViT trunk forward + backward with segment-anything's
attention (`standard`) and with `sdpa` (`cellsam.models.vit_attention`), alternating in the
same process: the tiny ViT at the model's input size and batch, and ViT-B at
`--vit-b-size` px with one image.

Precisions are run in the order given; every one after the first is also printed as a ratio
against the first. Examples:

    # the quickstart's tiny model on 2 CPU cores, and its data loader
    .venv/bin/python experiments/benchmarks/bench_train.py --overrides experiment=quickstart \
        --loader
    # ViT attention: standard vs sdpa (tiny and ViT-B trunks, forward + backward)
    .venv/bin/python experiments/benchmarks/bench_train.py --vit-attention --steps 5
    # FLOPs of the paper-size step per image (seconds on a CPU: nothing is computed)
    .venv/bin/python experiments/benchmarks/bench_train.py --overrides model=paper \
        --flops --steps 0 --cells 1000
    # the paper's model (ViT-B at 1024 px, 3500 queries) on a GPU, fp32 then bf16
    .venv/bin/python experiments/benchmarks/bench_train.py --overrides model=paper \
        --device cuda --precision 32 bf16 --batch 2 --cells 100
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from cellsam.data.transforms import geometric, label_targets, photometric, resize_image
from cellsam.models.sam import build_sam, trunk_features
from cellsam.models.vit_attention import use_vit_attention
from cellsam.tasks.train import build_module
from cellsam.utils.resolvers import register_resolvers

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def compose_config(overrides: list[str]):
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))  # as the entry points do
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["stage=finder", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # the run config interpolates hydra.runtime
    with open_dict(cfg):
        del cfg["hydra"]  # as @hydra.main hands it to train(cfg)
    return cfg


def random_batch(batch: int, size: int, cells: int, g: torch.Generator) -> tuple:
    """Images ``[B, 3, S, S]`` in [0, 1] and B targets of ``cells`` cxcywh boxes, sides
    2-6 % of the image."""
    images = torch.rand(batch, 3, size, size, generator=g)
    targets = []
    for _ in range(batch):
        centres = 0.05 + 0.9 * torch.rand(cells, 2, generator=g)
        sides = 0.02 + 0.04 * torch.rand(cells, 2, generator=g)
        targets.append({"boxes": torch.cat((centres, sides), 1)})
    return images, targets


def time_steps(module, images, targets, device, precision: str, warmup: int, steps: int):
    """Seconds per step and peak GPU bytes (0 on CPU) of ``steps`` timed training steps."""
    model, criterion = module.model.to(device).train(), module.criterion
    optimizer = module.configure_optimizers()["optimizer"]
    images = images.to(device)
    targets = [{"boxes": t["boxes"].to(device)} for t in targets]
    num_boxes = max(1.0, float(sum(len(t["boxes"]) for t in targets)))
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    clip = float(module.run_config.get("trainer", {}).get("gradient_clip_val") or 0.0)

    def step() -> None:
        with autocast:
            outputs = model.detect(images)
            total = criterion.weighted_total(criterion(outputs, targets, num_boxes))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()

    cuda = device.type == "cuda"
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    return seconds, torch.cuda.max_memory_allocated(device) if cuda else 0


def time_loader(cfg, input_size: int, items: int) -> tuple[float, float]:
    """Training items per second of the data config's train split: as the data module
    builds them, and with photometric steps at the stored size (the baseline)."""
    datamodule = instantiate(cfg.data, input_size=input_size, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.train_dataloader().dataset
    first = dataset.datasets[0] if hasattr(dataset, "datasets") else dataset
    n = min(items, len(first))

    def stored_size_item(i: int) -> None:
        index = first.indices[i]
        image = torch.from_numpy(first.data.images[index].copy())
        label = torch.from_numpy(first.data.labels[index, 0].astype("int64"))
        image, label = geometric(image, label, first.augment_cfg)
        resize_image(photometric(image, first.augment_cfg), first.input_size)
        label_targets(label)

    rates = []
    for fetch in (first.__getitem__, stored_size_item):
        torch.manual_seed(0)
        start = time.perf_counter()
        for i in range(n):
            fetch(i)
        rates.append(n / (time.perf_counter() - start))
    return rates[0], rates[1]


def time_vit_attention(
    variant: str, size: int, batch: int, device, precision: str, warmup: int, steps: int
) -> dict[str, float]:
    """Seconds per trunk forward + backward of SAM ``variant`` at ``size`` px, for each ViT
    attention; the two share weights and alternate, so machine load hits both alike."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random ViT weights are fine for timing
        encoder = build_sam(variant, image_size=size).image_encoder.to(device).train()
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    images = images.to(device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    cuda = device.type == "cuda"

    def step(kind: str) -> float:
        use_vit_attention(encoder, kind)
        encoder.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast:
            features = trunk_features(encoder, images)
        features.float().square().mean().backward()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    kinds = ("standard", "sdpa")
    for _ in range(warmup):
        for kind in kinds:
            step(kind)
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for i in range(steps):
        for kind in kinds if i % 2 == 0 else kinds[::-1]:
            times[kind].append(step(kind))
    return {kind: sorted(t)[len(t) // 2] for kind, t in times.items()}  # medians


def count_step_flops(model, criterion, cells: int) -> dict[str, int]:
    """FLOPs of one stage-1 step for one image: ``{"trunk", "finder", "losses"}``."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(fn) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return counter.get_total_flops()

    meta = copy.deepcopy(model).to("meta")
    size = meta.image_size
    features = {}

    def trunk() -> None:
        out = meta.trunk(torch.rand(1, 3, size, size, device="meta"))
        features["map"] = out.detach()
        out.backward(torch.ones_like(out))

    def layers_of(out: dict) -> list[dict]:
        return [out, *out["aux_outputs"]]

    def finder() -> None:
        layers = layers_of(meta.finder(features["map"].requires_grad_()))
        outputs = [o[k] for o in layers for k in ("pred_logits", "pred_boxes")]
        torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])

    flops = {"trunk": count(trunk), "finder": count(finder)}
    # The losses need real values (the matcher runs on them): random predictions on the CPU.
    g = torch.Generator().manual_seed(0)
    shapes = layers_of(meta.finder(features["map"]))
    preds = [{k: torch.rand(o[k].shape, generator=g).requires_grad_()
              for k in ("pred_logits", "pred_boxes")} for o in shapes]
    out = {**preds[0], "aux_outputs": preds[1:]}
    targets = [{"boxes": random_batch(1, 64, cells, g)[1][0]["boxes"]}]

    def losses() -> None:
        criterion.weighted_total(criterion(out, targets, num_boxes=float(cells))).backward()

    flops["losses"] = count(losses)
    return flops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overrides", nargs="*", default=["experiment=quickstart"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["32"], choices=["32", "bf16"])
    parser.add_argument("--batch", type=int, default=None, help="default: data.batch_size")
    parser.add_argument("--cells", type=int, default=10, help="cells per image")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch)")
    parser.add_argument("--loader", action="store_true", help="also time the data loader")
    parser.add_argument("--loader-items", type=int, default=192)
    parser.add_argument("--vit-attention", action="store_true",
                        help="also time ViT trunks with standard vs sdpa attention")
    parser.add_argument("--vit-b-size", type=int, default=256,
                        help="ViT-B input size for --vit-attention")
    parser.add_argument("--flops", action="store_true",
                        help="count the FLOPs of one training step per image")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")

    cfg = compose_config(args.overrides)
    batch = args.batch or int(cfg.data.batch_size)
    torch.manual_seed(0)
    model = instantiate(cfg.model, _convert_="all")
    size = model.image_size
    queries = model.finder.num_queries
    print(f"overrides: {' '.join(args.overrides)}")
    print(f"model: {size} px input, {queries} queries, trunk "
          f"{sum(p.numel() for p in model.part_parameters('trunk')) / 1e6:.1f} M parameters; "
          f"batch {batch}, {args.cells} cells per image, device {device}, "
          f"{torch.get_num_threads()} CPU threads")
    images, targets = random_batch(batch, size, args.cells, torch.Generator().manual_seed(0))
    run_config = OmegaConf.to_container(cfg, resolve=True)
    baseline = None
    for precision in args.precision if args.steps else []:  # --steps 0: no timing
        module = build_module(cfg.stage.module, model, run_config)
        seconds, peak = time_steps(
            module, images, targets, device, precision, args.warmup, args.steps
        )
        rate = batch / seconds
        line = f"precision {precision:>4}: {seconds * 1000:8.1f} ms/step, {rate:7.2f} images/s"
        if peak:
            line += f", peak GPU memory {peak / batch / 2**30:.2f} GiB per image"
        if baseline is None:
            baseline = rate
        else:
            line += f" ({rate / baseline:.2f}x precision {args.precision[0]})"
        print(line)
    if args.loader:
        current, stored = time_loader(cfg, size, args.loader_items)
        print(f"loader (train split, 1 process): {current:.1f} items/s with photometric steps "
              f"at the smaller size, {stored:.1f} at the stored size ({current / stored:.2f}x)")
    if args.flops:
        criterion = build_module(cfg.stage.module, model, run_config).criterion
        flops = count_step_flops(model, criterion, args.cells)
        parts = ", ".join(f"{k} {v / 1e12:.3f}" for k, v in flops.items())
        print(f"FLOPs per image of a stage-1 step ({size} px, {queries} queries, {args.cells} "
              f"cells): {sum(flops.values()) / 1e12:.3f} TFLOP ({parts}); MFU = images/s x "
              f"{sum(flops.values()) / 1e12:.3f} TFLOP / the device's peak TFLOP/s")
    if args.vit_attention:
        for variant, vit_size, vit_batch in (("tiny", size, batch), ("vit_b", args.vit_b_size, 1)):
            t = time_vit_attention(variant, vit_size, vit_batch, device, args.precision[0],
                                   args.warmup, args.steps)
            print(f"ViT attention, {variant} trunk fwd+bwd at {vit_size} px, batch {vit_batch}, "
                  f"precision {args.precision[0]}: standard {t['standard'] * 1000:.1f} ms, "
                  f"sdpa {t['sdpa'] * 1000:.1f} ms (median of {args.steps}; "
                  f"sdpa/standard time {t['sdpa'] / t['standard']:.2f}x)")


if __name__ == "__main__":
    main()
