"""DeepCell object metrics (Greenwald et al. 2022), counts identical to the toolbox.

This reproduces `deepcell_toolbox.metrics.ObjectMetrics` (deepcell-toolbox 0.12, as run
by `Metrics.calc_object_stats`, which first relabels both images sequentially) with the
default `cutoff1=0.4`, `cutoff2=0.1`. The toolbox's steps, and how they are done here:

1. IoU of every overlapping (true, pred) pair (here: one histogram pass, `matching`).
2. IoU "boost": a pair with 0 < IoU < 1 - cutoff1 and IoU <= cutoff1 where one object
   lies more than half inside the other (intersection > 0.5 * area of the true OR of the
   predicted object) gets its IoU SET to cutoff2 = 0.1. Quirk: "set", not "raised": a
   pair with IoU in (0.1, 0.4] drops to 0.1. That never changes a count (such pairs can
   neither match nor lose their graph edge); what matters is that tiny contained pieces
   with IoU < 0.1 keep a link to their parent.
3. Linear assignment on the augmented (n_true + n_pred) square cost matrix: 1 - IoU in
   the top-left block and its transpose bottom-right, cutoff1 = 0.4 on the diagonals of
   the two "unmatched" blocks, 1 elsewhere. Matching a pair costs 2 (1 - IoU), leaving
   both unmatched 2 * 0.4, so the optimum matches exactly the pairs with IoU > 0.6 (for
   label images those pairs are already disjoint; here any conflicting component is
   solved by `linear_sum_assignment` on its own block, so no dense square matrix is ever
   built). Quirk: a pair with IoU EXACTLY 0.6 (e.g. 3 of 5 pixels) is a cost tie;
   scipy's solver resolves it as "not matched" (checked against the toolbox's own code
   on scipy 1.17), and so does this module: a match needs IoU > 0.6 strictly (REFERENCE
   says ">= 0.6", which differs only on such exact ties).
4. The unmatched true and predicted objects become graph nodes, linked when their
   (boosted) IoU >= cutoff2. Each connected component is then classified:
   - one node: a missed (true) or gained (predicted) detection;
   - one true + one predicted node (a single edge, max degree 1): BOTH count as errors,
     one missed and one gained (quirk: the pair overlapped but is not a "split");
   - one true + several predicted: one split; several true + one predicted: one merge;
   - several true + several predicted: one catastrophe, AND (quirk) one extra "correct
     detection": the toolbox stores the group as one Detection with both a true and a
     predicted side that is neither a split nor a merge, which its `is_correct` accepts.
5. Precision = correct / n_pred, recall = correct / n_true (0 when the denominator is 0),
   F1 = harmonic mean of the two (0 if either is 0, as scipy's `hmean` gives).

Extra counts, as the toolbox defines them: `gained_det_from_split` = sum over splits of
(predicted pieces - 1); `missed_det_from_merge` = sum over merges of (true objects - 1);
`true_det_in_catastrophe` / `pred_det_in_catastrophe` = objects inside catastrophes.

`force_event_links=True` (toolbox option, off by default) is supported too: for every
boosted pair, the IoU of any OTHER pair with IoU >= 0.6 on the side of the containing
object is lowered to 0.59, so that object cannot match directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

import numpy as np

from .matching import Overlaps, bipartite_components, compute_overlaps, max_weight_matching

__all__ = ["DeepCellCounts", "deepcell_counts", "evaluate_deepcell"]


@dataclass(frozen=True)
class DeepCellCounts:
    """DeepCell object-metric counts of one image, or of a pool of images (`a + b`)."""

    n_true: int = 0
    n_pred: int = 0
    correct: int = 0
    missed: int = 0
    gained: int = 0
    splits: int = 0
    merges: int = 0
    catastrophes: int = 0
    gained_det_from_split: int = 0
    missed_det_from_merge: int = 0
    true_det_in_catastrophe: int = 0
    pred_det_in_catastrophe: int = 0

    @property
    def precision(self) -> float:
        return self.correct / self.n_pred if self.n_pred > 0 else 0.0

    @property
    def recall(self) -> float:
        return self.correct / self.n_true if self.n_true > 0 else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2.0 * p * r / (p + r) if p > 0 and r > 0 else 0.0

    def __add__(self, other: DeepCellCounts) -> DeepCellCounts:
        return DeepCellCounts(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def to_vector(self) -> np.ndarray:
        """The counts as a float64 vector `[12]` (field order), for all-reduce."""
        return np.array([getattr(self, f.name) for f in fields(self)], np.float64)

    @classmethod
    def from_vector(cls, vec: np.ndarray) -> DeepCellCounts:
        return cls(*(int(round(v)) for v in np.asarray(vec, np.float64)))

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(precision=self.precision, recall=self.recall, f1=self.f1)
        return out


def _boosted_iou(
    ov: Overlaps, cutoff1: float, cutoff2: float, force_event_links: bool
) -> np.ndarray:
    """Step 2: the toolbox's modified IoU `[n_pairs]` (same float operations)."""
    iou = ov.iou
    mod = iou.copy()
    # Same float ops as the toolbox so that boundary cases land on the same side.
    true_in_pred = ov.intersections / ov.true_areas[ov.rows]
    pred_in_true = ov.intersections / ov.pred_areas[ov.cols]
    small = (iou > 0) & (iou < 1 - cutoff1) & (iou <= cutoff1)
    boost = small & (np.maximum(true_in_pred, pred_in_true) > 0.5)
    mod[boost] = cutoff2
    if force_event_links and boost.any():
        strong = iou >= 1 - cutoff1
        lowered = 1 - cutoff1 - 0.01
        # A true object mostly inside pred p: no pair of column p may match directly.
        cols_hit = np.zeros(ov.n_pred, bool)
        cols_hit[ov.cols[boost & (true_in_pred > 0.5)]] = True
        # A predicted object mostly inside true t: no pair of row t may match directly.
        rows_hit = np.zeros(ov.n_true, bool)
        rows_hit[ov.rows[boost & (pred_in_true > 0.5)]] = True
        mod[strong & (cols_hit[ov.cols] | rows_hit[ov.rows])] = lowered
    return mod


def deepcell_counts(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    cutoff1: float = 0.4,
    cutoff2: float = 0.1,
    force_event_links: bool = False,
    overlaps: Overlaps | None = None,
) -> DeepCellCounts:
    """DeepCell object metrics of one pair of label images `[H, W]`.

    Args:
        y_true: true label image `[H, W]`, 0 = background, any positive ids.
        y_pred: predicted label image `[H, W]`.
        cutoff1: the toolbox's `cutoff1` (unmatched cost; a match needs IoU > 1 - cutoff1).
        cutoff2: the toolbox's `cutoff2` (graph edge when boosted IoU >= cutoff2).
        force_event_links: the toolbox option of the same name.
        overlaps: precomputed `compute_overlaps(y_true, y_pred)` to reuse.

    Returns:
        `DeepCellCounts` with the toolbox's counts; `.precision`, `.recall`, `.f1`.
    """
    if not 0 < cutoff2:
        raise ValueError("cutoff2 must be > 0 (pairs that do not touch are never linked)")
    ov = compute_overlaps(y_true, y_pred) if overlaps is None else overlaps
    n_true, n_pred = ov.n_true, ov.n_pred
    mod = _boosted_iou(ov, cutoff1, cutoff2, force_event_links)

    # Step 3: maximise sum(IoU - (1 - cutoff1)) over one-to-one matchings; only pairs
    # with a strictly positive gain can be chosen (exact ties stay unmatched).
    gain = mod - (1 - cutoff1)
    cand = gain > 0
    chosen = max_weight_matching(ov.rows[cand], ov.cols[cand], gain[cand], n_true, n_pred)
    m_rows, m_cols = ov.rows[cand][chosen], ov.cols[cand][chosen]
    n_matched = int(m_rows.size)

    # Step 4: graph of the unmatched objects, edges where the boosted IoU >= cutoff2.
    true_free = np.ones(n_true, bool)
    true_free[m_rows] = False
    pred_free = np.ones(n_pred, bool)
    pred_free[m_cols] = False
    edge = (mod >= cutoff2) & true_free[ov.rows] & pred_free[ov.cols]
    comp_t, comp_p = bipartite_components(ov.rows[edge], ov.cols[edge], n_true, n_pred)
    # Matched objects are isolated nodes of the full graph; drop them from the tallies.
    comp_t, comp_p = comp_t[true_free], comp_p[pred_free]
    n_comp = int(max(comp_t.max(initial=-1), comp_p.max(initial=-1)) + 1)
    nt = np.bincount(comp_t, minlength=n_comp)
    npd = np.bincount(comp_p, minlength=n_comp)
    used = (nt + npd) > 0
    nt, npd = nt[used], npd[used]

    small_group = (nt + npd) <= 2  # isolated node or a single edge: max degree <= 1
    split = (nt == 1) & (npd >= 2)
    merge = (nt >= 2) & (npd == 1)
    cata = (nt >= 2) & (npd >= 2)
    return DeepCellCounts(
        n_true=n_true,
        n_pred=n_pred,
        correct=n_matched + int(cata.sum()),
        missed=int(nt[small_group].sum()),
        gained=int(npd[small_group].sum()),
        splits=int(split.sum()),
        merges=int(merge.sum()),
        catastrophes=int(cata.sum()),
        gained_det_from_split=int((npd[split] - 1).sum()),
        missed_det_from_merge=int((nt[merge] - 1).sum()),
        true_det_in_catastrophe=int(nt[cata].sum()),
        pred_det_in_catastrophe=int(npd[cata].sum()),
    )


def evaluate_deepcell(
    y_trues: Iterable[np.ndarray],
    y_preds: Iterable[np.ndarray],
    cutoff1: float = 0.4,
    cutoff2: float = 0.1,
) -> dict[str, float]:
    """DeepCell metrics over a set of image pairs (label images `[H, W]`, same order).

    Returns the summed counts (`DeepCellCounts` fields), pooled `precision` /
    `recall` / `f1` from the sums (as the toolbox's summary does), the per-image mean
    `f1_mean`, and `n_images`.
    """
    total = DeepCellCounts()
    f1s = []
    for t, p in zip(y_trues, y_preds, strict=True):
        c = deepcell_counts(t, p, cutoff1=cutoff1, cutoff2=cutoff2)
        total = total + c
        f1s.append(c.f1)
    out = total.as_dict()
    out["f1_mean"] = float(np.mean(f1s)) if f1s else 0.0
    out["n_images"] = len(f1s)
    return out
