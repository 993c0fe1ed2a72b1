"""Hungarian matching between CellFinder queries and ground-truth cells."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor, nn

from cellsam.models.finder.sparse_assignment import (
    BoxMatchingCosts,
    solve_certified,
    solve_dense,
)

__all__ = ["SOLVERS", "HungarianMatcher"]

SOLVERS = ("certified", "dense")


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to target boxes, per image.

    Cost of pairing query ``q`` with target ``t`` (as Deformable / Anchor DETR):

        C = cost_class * focal(q) + cost_bbox * |b_q - b_t|_1 - cost_giou * GIoU(b_q, b_t)

    with ``focal(q) = alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p))`` and
    ``p = sigmoid(logit_q)``: the focal loss of calling q a cell minus that of calling it
    background. With a single class this term does not depend on ``t``. Costs are float64
    whatever the autocast dtype: the assignment is sensitive to ties.

    ``solver``: ``certified`` (default) solves a sparse problem on the pairs that can be
    cheap and proves it optimal for the dense one (``sparse_assignment.py``, compiled
    loops), falling back to ``dense`` (``scipy.optimize.linear_sum_assignment`` on the
    full ``[Q, N]`` matrix) when it cannot; both give the optimal total cost.

    ``num_threads`` bounds the threads solving assignments in parallel (default: the CPUs
    this process may use; 1 = serial; the certified solver releases the GIL). Problems
    whose largest ``Q x N`` has fewer than ``parallel_min_entries`` entries are solved
    serially: there a thread pool costs more than the assignments (README, Quickstart).
    """

    def __init__(
        self,
        *,
        cost_class: float,
        cost_bbox: float,
        cost_giou: float,
        focal_alpha: float,
        focal_gamma: float,
        solver: str,
        num_threads: int | None = None,
        parallel_min_entries: int = 50_000,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("all matcher costs are 0")
        if solver not in SOLVERS:
            raise ValueError(f"unknown matcher solver {solver!r}; expected one of {SOLVERS}")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.solver = solver
        self.num_threads = num_threads
        self.parallel_min_entries = parallel_min_entries

    @torch.no_grad()
    def class_cost(self, logits: Tensor) -> Tensor:
        """``[..., 1]`` class logits -> ``[...]`` float64 ``cost_class * focal(q)``."""
        prob = logits[..., 0].double().sigmoid()
        a, g = self.focal_alpha, self.focal_gamma
        neg = (1 - a) * prob.pow(g) * -(1 - prob + 1e-8).log()
        pos = a * (1 - prob).pow(g) * -(prob + 1e-8).log()
        return self.cost_class * (pos - neg)

    def problem(self, class_cost: np.ndarray, boxes: np.ndarray,
                target_boxes: np.ndarray) -> BoxMatchingCosts:
        """One image's matching problem from ``[Q]`` class costs, ``[Q, 4]`` and
        ``[N, 4]`` cxcywh boxes (float64 arrays)."""
        return BoxMatchingCosts(class_cost, boxes, target_boxes, self.cost_bbox, self.cost_giou)

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """Matching cost of one image (the dense solver's matrix).

        Args:
            logits: ``[Q, 1]`` class logits.
            boxes: ``[Q, 4]`` predicted cxcywh.
            target_boxes: ``[N, 4]`` target cxcywh.

        Returns:
            ``[Q, N]`` float64 cost on the CPU (lower is better).
        """
        problem = self.problem(self.class_cost(logits).cpu().numpy(), _host64(boxes),
                               _host64(target_boxes))
        return torch.from_numpy(problem.dense())

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """
        Args:
            outputs: ``{"pred_logits": [B, Q, 1], "pred_boxes": [B, Q, 4]}`` (other keys
                ignored).
            targets: B dicts with ``"boxes": [N_i, 4]`` cxcywh normalised.

        Returns:
            B tuples ``(query_idx [K_i], target_idx [K_i])`` int64 on the CPU, with
            ``K_i = N_i``; query indices ascending. Empty for an image without cells.

        Raises:
            ValueError: an image has more cells than there are queries, or a cost is not
                finite (NaN predictions).
        """
        return self.match_layers([outputs], targets)[0]

    @torch.no_grad()
    def match_layers(
        self, layers: list[dict], targets: list[dict]
    ) -> list[list[tuple[Tensor, Tensor]]]:
        """Match several decoder layers' outputs (final + aux) to the same targets.

        Same result as calling ``forward`` on each layer, but all layers' predictions reach
        the CPU in one transfer (one device sync instead of ``L x B``) and the ``L x B``
        problems are solved in a thread pool, which matters at the paper's scale (6 layers
        x 4 images x up to 1000 cells per step).

        Args:
            layers: L dicts with ``pred_logits [B, Q, 1]`` and ``pred_boxes [B, Q, 4]``.
            targets: B dicts with ``"boxes": [N_i, 4]``.

        Returns:
            L lists of B ``(query_idx, target_idx)`` tuples, as ``forward``.
        """
        batch, num_queries = layers[0]["pred_logits"].shape[:2]
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} targets for a batch of {batch}")
        sizes = [t["boxes"].shape[0] for t in targets]
        for i, n in enumerate(sizes):
            if n > num_queries:
                raise ValueError(
                    f"image {i} has {n} cells but the detector has only {num_queries} queries; "
                    f"at least {n} queries are needed (DETR-style detectors want about 3.5x "
                    f"as many queries as objects, here ~{int(np.ceil(3.5 * n))})"
                )
        jobs = [(layer, i) for layer in range(len(layers)) for i in range(batch) if sizes[i]]
        # What the solver needs reaches the host in one transfer: [L, B, Q] class costs
        # and [L, B, Q, 4] boxes, never a [Q, N] matrix.
        class_costs = self.class_cost(torch.stack([out["pred_logits"] for out in layers]))
        boxes = torch.stack([out["pred_boxes"] for out in layers]).double()
        host = torch.cat((class_costs[..., None], boxes), dim=-1).cpu().numpy()
        target_boxes = [_host64(t["boxes"]) for t in targets]
        problems = [
            self.problem(host[layer, i, :, 0], host[layer, i, :, 1:], target_boxes[i])
            for layer, i in jobs
        ]
        workers = min(len(jobs), self.num_threads or _available_cpus())
        if num_queries * max(sizes, default=0) < self.parallel_min_entries:
            workers = 1
        solve = _solve_certified if self.solver == "certified" else _solve_dense
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                solved = list(pool.map(solve, problems, [i for _, i in jobs]))
        else:
            solved = [solve(p, i) for p, (_, i) in zip(problems, jobs)]

        empty = torch.empty(0, dtype=torch.int64)
        result = [[(empty, empty) for _ in range(batch)] for _ in layers]
        for (layer, i), indices in zip(jobs, solved):
            result[layer][i] = indices
        return result


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _host64(tensor: Tensor) -> np.ndarray:
    return tensor.detach().double().cpu().numpy()


def _indices(queries: np.ndarray) -> tuple[Tensor, Tensor]:
    """``[N]`` query of each target -> ``(query_idx, target_idx)``, queries ascending."""
    order = np.argsort(queries, kind="stable")
    return torch.from_numpy(queries[order]), torch.from_numpy(order.astype(np.int64))


def _solve_certified(problem: BoxMatchingCosts, image: int) -> tuple[Tensor, Tensor]:
    """Optimal assignment of one image by ``solve_certified`` (runs in a worker thread)."""
    try:
        return _indices(solve_certified(problem).queries)
    except ValueError as err:
        raise ValueError(f"image {image}: {err}") from None


def _solve_dense(problem: BoxMatchingCosts, image: int) -> tuple[Tensor, Tensor]:
    """Optimal assignment of one image on the dense matrix (runs in a worker thread)."""
    try:
        return _indices(solve_dense(problem))
    except ValueError as err:
        raise ValueError(f"image {image}: {err}") from None
