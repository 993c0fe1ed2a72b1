"""The Hungarian matcher at the paper's scale on CPU: dense scipy against the certified
sparse solver (`cellsam/models/finder/sparse_assignment.py`).

1. Per image and decoder layer, --queries queries, for each cell count: the whole matcher
   call on CPU tensors (costs included), the baseline being what the matcher did before:
   a dense float32 torch cost matrix and `scipy.optimize.linear_sum_assignment`. Costs come
   from a partially trained CellFinder (trained here for --train-steps steps on rendered
   cell layouts, cached under --cache; every decoder layer of 4 layouts gives a problem),
   from an untrained detector (every box the initial size, `untrained_outputs`) and from
   random boxes and logits. Printed: best and median ms, the speed-up, how many
   problems were certified (the rest fell back to the dense solver), sparse rounds, the
   share of the dense matrix evaluated, and the largest |total cost difference| (must be
   float rounding on every instance).
2. One training step's matching through `match_layers`: --layers layers x --batch images,
   dense and certified, and the matcher's share of a paper-size CellFinder step (forward +
   losses + backward on a [1, 768, 64, 64] map; the ViT trunk is not included, so the true
   share is smaller still).

One core, as the targets are stated (10 ms at 1000 cells, 2 ms at 300):

    taskset -c 0 .venv/bin/python experiments/benchmarks/bench_matcher.py --threads 1
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
from cellsam.models.finder.sparse_assignment import solve_certified
from cellsam.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou

ROOT = Path(__file__).resolve().parents[2]
STAGE_CONF = ROOT / "conf" / "stage" / "finder.yaml"


def stage_module() -> dict:
    """`stage.module` of `conf/stage/finder.yaml`: costs, loss weights, focal settings."""
    return OmegaConf.to_container(OmegaConf.load(STAGE_CONF))["stage"]["module"]


def make_matcher(solver: str, threads: int | None = None) -> HungarianMatcher:
    module = stage_module()
    return HungarianMatcher(**module["matcher_costs"], focal_alpha=module["focal_alpha"],
                            focal_gamma=module["focal_gamma"], solver=solver,
                            num_threads=threads)


def make_criterion(matcher: HungarianMatcher, module: dict) -> SetCriterion:
    return SetCriterion(matcher, module["loss_weights"], module["focal_alpha"],
                        module["focal_gamma"], module["aux_layer_matches_per_cell"],
                        module["iou_aware_class"])


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


def untrained_outputs(batch: int, queries: int, g: torch.Generator) -> dict:
    """A detector at step 0: every box 0.12 of the image wide (CellFinder's initial size),
    so each cell overlaps many queries, and logits near the focal prior (p = 0.01)."""
    centres = torch.rand(batch, queries, 2, generator=g)
    return {
        "pred_logits": torch.randn(batch, queries, 1, generator=g) * 0.1 - 4.6,
        "pred_boxes": torch.cat((centres, torch.full((batch, queries, 2), 0.12)), dim=-1),
    }


def render(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, 4]`` cxcywh -> ``[4, size, size]`` features a detector can learn boxes from:
    a soft blob per cell, its width and height where it lies, and a coverage count."""
    yy, xx = torch.meshgrid((torch.arange(size) + 0.5) / size, (torch.arange(size) + 0.5) / size,
                            indexing="ij")
    out = torch.zeros(4, size, size)
    for cx, cy, w, h in boxes.tolist():
        inside = ((xx - cx).abs() <= w / 2) & ((yy - cy).abs() <= h / 2)
        blob = torch.exp(-4 * (((xx - cx) / w) ** 2 + ((yy - cy) / h) ** 2))
        out[0] = torch.maximum(out[0], blob)
        out[1][inside], out[2][inside] = 20 * w, 20 * h
        out[3] += inside.float()
    return out


def detector_outputs(cells: int, queries: int, steps: int, size: int, cache: Path) -> dict:
    """Every decoder layer's outputs of a CellFinder trained ``steps`` steps on 4 layouts
    of ``cells`` cells: ``{"layers": [L dicts of [4, Q, ...]], "targets": 4 dicts}``,
    cached (the training takes minutes)."""
    path = cache / f"detector_q{queries}_c{cells}_s{steps}_m{size}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    g = torch.Generator().manual_seed(cells)
    targets = [random_targets(cells, g) for _ in range(4)]
    features = torch.stack([render(t["boxes"], size) for t in targets])
    torch.manual_seed(0)
    model = CellFinder(4, num_queries=queries).train()
    module = stage_module()
    criterion = make_criterion(make_matcher("certified"), module)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    t0 = time.perf_counter()
    for step in range(steps):
        i = step % 4
        losses = criterion(model(features[i : i + 1]), [targets[i]], num_boxes=float(cells))
        loss = criterion.weighted_total(losses)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimiser.step()
        if step % 20 == 0 or step == steps - 1:
            print(f"   training {cells} cells: step {step} loss {loss.item():.2f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    with torch.no_grad():
        out = model.eval()(features)
    result = {"layers": [{"pred_logits": o["pred_logits"], "pred_boxes": o["pred_boxes"]}
                         for o in [*out["aux_outputs"], out]], "targets": targets}
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(result, path)
    return result


def dense_torch_baseline(matcher: HungarianMatcher, logits: torch.Tensor, boxes: torch.Tensor,
                         target_boxes: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The matcher before the certified solver: float32 torch costs on the full [Q, N]
    matrix, then dense scipy."""
    prob = logits[:, 0].float().sigmoid()
    a, g = matcher.focal_alpha, matcher.focal_gamma
    focal = a * (1 - prob).pow(g) * -(prob + 1e-8).log() - (1 - a) * prob.pow(g) * -(
        1 - prob + 1e-8).log()
    giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes))
    cost = giou.mul_(-matcher.cost_giou)
    cost.add_(torch.cdist(boxes, target_boxes, p=1), alpha=matcher.cost_bbox)
    cost.add_(matcher.cost_class * focal[:, None])
    return linear_sum_assignment(cost.numpy().astype(np.float64))


def problems(kind: str, cells: int, args: argparse.Namespace) -> list[tuple]:
    """(logits [Q, 1], boxes [Q, 4], target boxes [N, 4]) per image and layer."""
    if kind in ("random", "untrained"):
        g = torch.Generator().manual_seed(cells)
        make = random_outputs if kind == "random" else untrained_outputs
        out = [make(1, args.queries, g) for _ in range(args.random_problems)]
        return [(o["pred_logits"][0], o["pred_boxes"][0], random_targets(cells, g)["boxes"])
                for o in out]
    data = detector_outputs(cells, args.queries, args.train_steps, args.map_size, args.cache)
    return [(layer["pred_logits"][i], layer["pred_boxes"][i], t["boxes"])
            for layer in data["layers"] for i, t in enumerate(data["targets"])]


def time_call(repeats: int, fn, *args) -> tuple[float, object]:
    """Best-of-``repeats`` seconds of ``fn(*args)`` and its result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, result


def compare_solvers(kind: str, cells: int, args: argparse.Namespace) -> None:
    dense = make_matcher("dense", threads=1)
    certified = make_matcher("certified", threads=1)
    base_ms, cert_ms, diffs, rounds, shares, proven = [], [], [], [], [], 0
    for logits, boxes, target_boxes in problems(kind, cells, args):
        outputs = {"pred_logits": logits[None], "pred_boxes": boxes[None]}
        targets = [{"boxes": target_boxes}]
        t_base, (rows, cols) = time_call(args.repeats, dense_torch_baseline, dense, logits,
                                         boxes, target_boxes)
        t_cert, ((q, t),) = time_call(args.repeats, certified, outputs, targets)
        matrix = dense.cost_matrix(logits, boxes, target_boxes).numpy()
        diffs.append(abs(matrix[q, t].sum() - matrix[rows, cols].sum()))
        problem = certified.problem(certified.class_cost(logits).numpy(),
                                    boxes.double().numpy(), target_boxes.double().numpy())
        stats = solve_certified(problem)
        proven += stats.certified
        rounds.append(stats.rounds)
        shares.append(stats.evaluated / matrix.size)
        base_ms.append(1e3 * t_base)
        cert_ms.append(1e3 * t_cert)
    n = len(base_ms)
    print(f"{kind:>9} {cells:>6} {n:>5} {min(base_ms):>8.1f} {statistics.median(base_ms):>8.1f} "
          f"{min(cert_ms):>8.2f} {statistics.median(cert_ms):>8.2f} "
          f"{statistics.median(base_ms) / statistics.median(cert_ms):>7.1f}x "
          f"{proven:>3}/{n:<3} {max(rounds):>6} {max(shares):>7.4f} {max(diffs):>9.1e}")


def time_step_matching(solver: str, cells: int, args: argparse.Namespace,
                       threads: int) -> float:
    """Best ms to match ``layers x batch`` detector-like images with ``match_layers``."""
    data = detector_outputs(cells, args.queries, args.train_steps, args.map_size, args.cache)
    layers = [{k: v[: args.batch] for k, v in layer.items()} for layer in data["layers"]]
    layers = layers[-args.layers:]
    matcher = make_matcher(solver, threads=threads)
    best, _ = time_call(args.repeats, matcher.match_layers, layers,
                        data["targets"][: args.batch])
    return 1e3 * best


def time_model_step(args: argparse.Namespace) -> float:
    """Best ms of a paper-size CellFinder forward + losses + backward, matching excluded
    (the dense matcher's time is subtracted)."""
    torch.manual_seed(args.seed)
    model = CellFinder(768, num_queries=args.queries).train()
    module = stage_module()

    class Timed(HungarianMatcher):
        elapsed = 0.0

        def match_layers(self, layers, targets):
            t0 = time.perf_counter()
            result = super().match_layers(layers, targets)
            Timed.elapsed += time.perf_counter() - t0
            return result

    matcher = Timed(**module["matcher_costs"], focal_alpha=module["focal_alpha"],
                    focal_gamma=module["focal_gamma"], solver=module["matcher_solver"])
    criterion = make_criterion(matcher, module)
    features = torch.randn(1, 768, 64, 64)
    targets = [random_targets(args.step_cells, torch.Generator().manual_seed(args.seed))]
    best = float("inf")
    for _ in range(2):
        Timed.elapsed = 0.0
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        losses = criterion(model(features), targets, num_boxes=float(args.step_cells))
        criterion.weighted_total(losses).backward()
        best = min(best, time.perf_counter() - t0 - Timed.elapsed)
    return 1e3 * best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=3500)
    parser.add_argument("--cells", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--repeats", type=int, default=3, help="best of, per problem")
    parser.add_argument("--random-problems", type=int, default=6)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--map-size", type=int, default=32, help="feature map side")
    parser.add_argument("--cache", type=Path, default=ROOT / "outputs" / "bench_matcher")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--step-cells", type=int, default=1000)
    parser.add_argument("--skip-step", action="store_true", help="no model step (part 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for cells in args.cells:  # train (or load) first, so that the timings run undisturbed
        detector_outputs(cells, args.queries, args.train_steps, args.map_size, args.cache)

    print(f"\n1. One image and layer, {args.queries} queries, best of {args.repeats} per "
          "problem; dense = float32 torch costs + linear_sum_assignment (the former matcher)")
    print(f"{'costs':>9} {'cells':>6} {'probs':>5} {'dense':>8} {'med':>8} {'certif.':>8} "
          f"{'med':>8} {'speedup':>8} {'proven':>7} {'rounds':>6} {'share':>7} {'max|diff|':>9}")
    print(f"{'':>9} {'':>6} {'':>5} {'best ms':>8} {'ms':>8} {'best ms':>8} {'ms':>8}")
    for kind in ("detector", "untrained", "random"):
        for cells in args.cells:
            compare_solvers(kind, cells, args)

    print(f"\n2. A step's matching: {args.layers} layers x {args.batch} images "
          "(detector costs), best ms")
    print(f"{'cells':>6} {'dense':>8} {'certified':>10} {'cert. 2 threads':>16}")
    step_ms = {}
    for cells in args.cells:
        dense = time_step_matching("dense", cells, args, threads=1)
        cert = time_step_matching("certified", cells, args, threads=1)
        cert2 = time_step_matching("certified", cells, args, threads=2)
        step_ms[cells] = (dense, cert)
        print(f"{cells:>6} {dense:>8.0f} {cert:>10.1f} {cert2:>16.1f}")
    if args.skip_step:
        return
    model_ms = args.batch * time_model_step(args)
    print(f"\nPaper-size CellFinder forward + losses + backward without matching, x batch "
          f"{args.batch}: {model_ms:.0f} ms (CPU; ViT trunk not included)")
    print(f"{'cells':>6} {'dense share':>12} {'certified share':>16}")
    for cells, (dense, cert) in step_ms.items():
        print(f"{cells:>6} {dense / (model_ms + dense):>12.3f} {cert / (model_ms + cert):>16.3f}")


if __name__ == "__main__":
    main()
