"""How much of a CellFinder training step the Hungarian matcher costs, on CPU.

1. Matcher milliseconds per image and decoder layer at --queries queries for several cell
   counts (random boxes), split into cost matrix (torch) and assignment (scipy).
2. One training step's worth of matching (final + 5 aux layers x --batch images) through
   ``match_layers``, serial (1 thread) and threaded.
3. One CellFinder forward + losses (matching every layer) + backward at paper size on a
   [1, 768, 64, 64] feature map, and the matcher's share of it.

The ViT trunk is NOT part of the measured step (its forward/backward would make the
matcher's share smaller still). Example:

    .venv/bin/python experiments/benchmarks/bench_matcher.py --cells 100 500 1000
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from scipy.optimize import linear_sum_assignment

from cellsam.models.finder import CellFinder, HungarianMatcher, SetCriterion

STAGE_CONF = Path(__file__).resolve().parents[2] / "conf" / "stage" / "finder.yaml"


def stage1_criterion() -> tuple[TimedMatcher, SetCriterion]:
    """A timed matcher and the criterion around it, with the costs, loss weights and focal
    settings of `conf/stage/finder.yaml` (their one home)."""
    module = OmegaConf.to_container(OmegaConf.load(STAGE_CONF))["stage"]["module"]
    focal = {"focal_alpha": module["focal_alpha"], "focal_gamma": module["focal_gamma"]}
    matcher = TimedMatcher(**module["matcher_costs"], **focal)
    return matcher, SetCriterion(matcher, module["loss_weights"], **focal)


def random_targets(num_cells: int, g: torch.Generator) -> dict:
    """``{"boxes": [N, 4]}`` cxcywh: centres anywhere, sides 1-5 % of the image (cells)."""
    centres = torch.rand(num_cells, 2, generator=g) * 0.9 + 0.05
    sides = torch.rand(num_cells, 2, generator=g) * 0.04 + 0.01
    return {"boxes": torch.cat((centres, sides), dim=1)}


def random_outputs(batch: int, queries: int, g: torch.Generator) -> dict:
    """Predictions: ``pred_logits [B, Q, 1]``, ``pred_boxes [B, Q, 4]``."""
    centres = torch.rand(batch, queries, 2, generator=g)
    sides = torch.rand(batch, queries, 2, generator=g) * 0.1
    return {
        "pred_logits": torch.randn(batch, queries, 1, generator=g),
        "pred_boxes": torch.cat((centres, sides), dim=-1),
    }


def time_matcher(queries: int, cells: int, repeats: int, seed: int) -> tuple[float, ...]:
    """One image, one layer: (median total, best total, median cost, median assign) in ms.

    The best (minimum) is the figure least disturbed by other processes on the machine.
    """
    g = torch.Generator().manual_seed(seed)
    matcher = HungarianMatcher(num_threads=1)
    totals, costs, assigns = [], [], []
    for _ in range(repeats):
        outputs, target = random_outputs(1, queries, g), random_targets(cells, g)
        t0 = time.perf_counter()
        matcher(outputs, [target])
        totals.append(time.perf_counter() - t0)
        # The same work split in two, to say where the time goes.
        t0 = time.perf_counter()
        cost = matcher.cost_matrix(
            outputs["pred_logits"][0], outputs["pred_boxes"][0], target["boxes"]
        )
        cost = cost.numpy().astype(np.float64)
        t1 = time.perf_counter()
        linear_sum_assignment(cost)
        costs.append(t1 - t0)
        assigns.append(time.perf_counter() - t1)
    medians = [1e3 * statistics.median(x) for x in (totals, costs, assigns)]
    return medians[0], 1e3 * min(totals), medians[1], medians[2]


def time_step_matching(
    queries: int, cells: int, layers: int, batch: int, threads: int | None, repeats: int, seed: int
) -> float:
    """Best-of-``repeats`` milliseconds to match ``layers x batch`` images with
    ``match_layers``."""
    g = torch.Generator().manual_seed(seed)
    outputs = [random_outputs(batch, queries, g) for _ in range(layers)]
    targets = [random_targets(cells, g) for _ in range(batch)]
    matcher = HungarianMatcher(num_threads=threads)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        matcher.match_layers(outputs, targets)
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


class TimedMatcher(HungarianMatcher):
    """HungarianMatcher that accumulates its own wall time."""

    elapsed = 0.0

    def match_layers(self, layers: list[dict], targets: list[dict]) -> list:
        t0 = time.perf_counter()
        result = super().match_layers(layers, targets)
        self.elapsed += time.perf_counter() - t0
        return result


def time_step(args: argparse.Namespace) -> tuple[float, float, float, int]:
    """(median step ms, best step ms, matcher ms inside the best step, layers matched)."""
    torch.manual_seed(args.seed)
    model = CellFinder(args.in_channels, num_queries=args.queries).train()
    matcher, criterion = stage1_criterion()
    g = torch.Generator().manual_seed(args.seed)
    features = torch.randn(1, args.in_channels, args.size, args.size, requires_grad=True)
    targets = [random_targets(args.step_cells, g)]
    steps, matched = [], []
    for i in range(args.warmup + args.repeats):
        matcher.elapsed = 0.0
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = model(features)
        losses = criterion(out, targets, num_boxes=float(args.step_cells))
        criterion.weighted_total(losses).backward()
        elapsed = time.perf_counter() - t0
        if i >= args.warmup:
            steps.append(elapsed)
            matched.append(matcher.elapsed)
    layers = 1 + len(out["aux_outputs"])
    best = int(np.argmin(steps))
    return 1e3 * statistics.median(steps), 1e3 * steps[best], 1e3 * matched[best], layers


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=3500)
    parser.add_argument("--cells", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--matcher-repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4, help="images per step for part 2")
    parser.add_argument("--layers", type=int, default=6, help="decoder layers matched")
    parser.add_argument("--in-channels", type=int, default=768)
    parser.add_argument("--size", type=int, default=64, help="feature map side (64 = 1024 px)")
    parser.add_argument("--step-cells", type=int, default=1000, help="cells in the timed step")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-step", action="store_true", help="matcher figures only")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    print(
        f"\n1. Matcher, one image, one decoder layer, {args.queries} queries "
        f"(median and best of {args.matcher_repeats}):"
    )
    print(f"{'cells':>6} {'total ms':>9} {'best ms':>8} {'cost ms':>8} {'assign ms':>10}")
    per_image = {}
    for cells in args.cells:
        total, best, cost, assign = time_matcher(
            args.queries, cells, args.matcher_repeats, args.seed
        )
        per_image[cells] = best
        print(f"{cells:>6} {total:>9.1f} {best:>8.1f} {cost:>8.1f} {assign:>10.1f}")

    print(
        f"\n2. Matching {args.layers} layers x {args.batch} images with match_layers "
        f"(best of {args.matcher_repeats}):"
    )
    print(f"{'cells':>6} {'1 thread ms':>12} {'threaded ms':>12}")
    for cells in args.cells:
        common = (args.queries, cells, args.layers, args.batch)
        repeats = args.matcher_repeats
        serial = time_step_matching(*common, threads=1, repeats=repeats, seed=args.seed)
        threaded = time_step_matching(*common, threads=None, repeats=repeats, seed=args.seed)
        print(f"{cells:>6} {serial:>12.0f} {threaded:>12.0f}")
    if args.skip_step:
        return

    print(
        f"\n3. CellFinder step on CPU: forward + losses + backward, features "
        f"[1, {args.in_channels}, {args.size}, {args.size}], {args.queries} queries, 6+6 layers, "
        f"{args.step_cells} cells (warm-up {args.warmup}, median of {args.repeats})."
    )
    print("   The ViT trunk is NOT included in this step time.")
    median_ms, step_ms, match_ms, layers = time_step(args)
    print(f"step_ms            {step_ms:.0f} (best; median {median_ms:.0f})")
    print(f"matcher_ms         {match_ms:.0f} (in that step: final + {layers - 1} aux layers)")
    print(f"matcher_ms/step_ms {match_ms / step_ms:.3f}")
    model_ms = step_ms - match_ms
    print("\nEstimated share per cell count (model time as measured, matcher = part 1 x layers):")
    print(f"{'cells':>6} {'matcher ms/step':>16} {'share':>7}")
    for cells, ms in per_image.items():
        total = ms * layers  # best per-image figure x layers
        print(f"{cells:>6} {total:>16.0f} {total / (model_ms + total):>7.3f}")


if __name__ == "__main__":
    main()
