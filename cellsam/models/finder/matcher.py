"""Hungarian matching between CellFinder queries and ground-truth cells."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from cellsam.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher"]


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to target boxes, per image.

    Cost of pairing query ``q`` with target ``t`` (as Deformable / Anchor DETR):

        C = cost_class * focal(q) + cost_bbox * |b_q - b_t|_1 - cost_giou * GIoU(b_q, b_t)

    with ``focal(q) = alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p))`` and
    ``p = sigmoid(logit_q)``: the focal loss of calling q a cell minus that of calling it
    background. With a single class this term does not depend on ``t``.

    Costs are computed per image (``[Q, N_i]``), not for the whole batch at once as DETR
    does (``[B*Q, sum N]``), which would be B times larger for nothing.

    ``num_threads`` bounds the threads solving assignments in parallel (default: the CPUs
    this process may use; 1 = serial). Problems whose largest cost matrix has fewer than
    ``parallel_min_entries`` entries are solved serially: there a thread pool costs more
    than the assignments (README, Quickstart).
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        num_threads: int | None = None,
        parallel_min_entries: int = 50_000,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("all matcher costs are 0")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.num_threads = num_threads
        self.parallel_min_entries = parallel_min_entries

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """Matching cost of one image.

        Args:
            logits: ``[Q, 1]`` class logits.
            boxes: ``[Q, 4]`` predicted cxcywh.
            target_boxes: ``[N, 4]`` target cxcywh.

        Returns:
            ``[Q, N]`` float32 cost (lower is better).
        """
        # float32 whatever the autocast dtype: the assignment is sensitive to ties.
        prob = logits[:, 0].float().sigmoid()  # [Q]
        boxes = boxes.float()
        target_boxes = target_boxes.to(boxes)
        a, g = self.focal_alpha, self.focal_gamma
        neg = (1 - a) * prob.pow(g) * -(1 - prob + 1e-8).log()
        pos = a * (1 - prob).pow(g) * -(prob + 1e-8).log()
        cost_class = (pos - neg)[:, None]  # [Q, 1], broadcast over targets
        cost_bbox = torch.cdist(boxes, target_boxes, p=1)  # [Q, N]
        giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes))
        # In place on the fresh [Q, N] GIoU tensor: 3.5M entries at 1000 cells, and the
        # combination would otherwise allocate three more of them.
        cost = giou.mul_(-self.cost_giou)
        cost.add_(cost_bbox, alpha=self.cost_bbox)
        return cost.add_(cost_class * self.cost_class)

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

        Same result as calling ``forward`` on each layer, but all ``L x B`` cost matrices
        reach the CPU in one transfer (one device sync instead of ``L x B``) and the
        assignments run in a thread pool (``linear_sum_assignment`` releases the GIL), which
        matters at the paper's scale (6 layers x 4 images x up to 1000 cells per step).

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
        costs = [
            self.cost_matrix(
                layers[layer]["pred_logits"][i], layers[layer]["pred_boxes"][i], targets[i]["boxes"]
            )
            for layer, i in jobs
        ]
        flat = torch.cat([c.reshape(-1) for c in costs]).cpu().numpy() if costs else None
        offsets = np.cumsum([0] + [c.numel() for c in costs])
        matrices = [
            flat[offsets[k] : offsets[k + 1]].reshape(num_queries, sizes[i])
            for k, (_, i) in enumerate(jobs)
        ]
        workers = min(len(jobs), self.num_threads or _available_cpus())
        if num_queries * max(sizes, default=0) < self.parallel_min_entries:
            workers = 1
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                solved = list(pool.map(_solve, matrices, [i for _, i in jobs]))
        else:
            solved = [_solve(m, i) for m, (_, i) in zip(matrices, jobs)]

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


def _solve(cost: np.ndarray, image: int) -> tuple[Tensor, Tensor]:
    """Optimal assignment of one ``[Q, N]`` float32 cost matrix (runs in a worker thread)."""
    cost = cost.astype(np.float64)
    if not np.isfinite(cost).all():
        raise ValueError(
            f"non-finite matching cost for image {image} (NaN/inf predictions or zero-area boxes)"
        )
    rows, cols = linear_sum_assignment(cost)
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)
