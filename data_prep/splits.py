"""Train/val/test assignment shared by every converter (paper, Appendix A).

Rules, applied to *groups* (all tiles and fields of view of one source image or one
sample share a group id, so they always land in the same split):

1. Duplicates: groups whose images are byte-identical (same content hash) are merged and
   go to train.
2. A group whose samples carry different publisher splits goes to train (counted).
3. A group with a publisher split keeps it. If the publisher has train and test but no
   val, `val_fraction` of the train groups (at least one when there are two or more) move
   to val, chosen with the seed. A publisher "split" with train only counts as none.
4. Groups without a publisher split are shuffled with the seed (sorted first, so the
   result depends only on the group ids) and split 80/10/10; with 3 or more such groups,
   val and test get at least one each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class SplitPlan:
    """The split of every sample (same order as the input) and what the rules changed."""

    splits: list[str]
    counts: dict[str, int] = field(default_factory=dict)


class _Groups:
    """Union-find over group ids (merges groups that share a duplicate image)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, g: str) -> str:
        self.parent.setdefault(g, g)
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _n_part(n: int, fraction: float, at_least_one: bool) -> int:
    k = int(np.floor(n * fraction + 0.5))
    return max(k, 1) if at_least_one and fraction > 0 else k


def assign_splits(
    groups: Sequence[str],
    given: Sequence[str | None],
    hashes: Sequence[str],
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    val_fraction: float = 0.1,
) -> SplitPlan:
    """Split samples described by their group id, publisher split (or None) and image hash."""
    if not len(groups) == len(given) == len(hashes):
        raise ValueError("groups, given and hashes must have the same length")
    bad = sorted({s for s in given if s is not None and s not in SPLIT_NAMES})
    if bad:
        raise ValueError(f"unknown split names {bad}; use {list(SPLIT_NAMES)}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    uf = _Groups()
    first_group_of_hash: dict[str, str] = {}
    dup_hashes: set[str] = set()
    for g, h in zip(groups, hashes):
        uf.find(g)
        if h in first_group_of_hash:
            dup_hashes.add(h)
            uf.union(first_group_of_hash[h], g)
        else:
            first_group_of_hash[h] = g
    roots = [uf.find(g) for g in groups]
    dup_roots = {r for r, h in zip(roots, hashes) if h in dup_hashes}
    wanted: dict[str, set[str]] = {}
    for r, s in zip(roots, given):
        wanted.setdefault(r, set())
        if s is not None:
            wanted[r].add(s)

    counts = {"duplicate_images_to_train": sum(h in dup_hashes for h in hashes),
              "split_conflicts_to_train": 0}
    decided: dict[str, str] = {}
    free: list[str] = []
    for r in sorted(wanted):
        if r in dup_roots:
            decided[r] = "train"
        elif len(wanted[r]) > 1:
            decided[r] = "train"
            counts["split_conflicts_to_train"] += 1
        elif wanted[r]:
            decided[r] = next(iter(wanted[r]))
        else:
            free.append(r)

    rng = np.random.default_rng(seed)
    given_groups = [r for r in decided if r not in dup_roots]
    if given_groups and {decided[r] for r in given_groups} == {"train"}:
        # a publisher "split" that is train only is no split: those groups are free
        free = sorted(free + given_groups)
        decided = {r: "train" for r in decided if r in dup_roots}
    publisher = set(decided.values())
    if "val" not in publisher and "train" in publisher and "test" in publisher:
        movable = sorted(r for r, s in decided.items() if s == "train" and r not in dup_roots)
        k = _n_part(len(movable), val_fraction, at_least_one=len(movable) >= 2)
        for i in rng.permutation(len(movable))[:k]:
            decided[movable[i]] = "val"
        counts["val_from_train_groups"] = k
    if free:
        n = len(free)
        n_test = _n_part(n, fractions[2], at_least_one=n >= 3)
        n_val = _n_part(n, fractions[1], at_least_one=n >= 3)
        order = rng.permutation(n)
        for rank, i in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            decided[free[i]] = split
    return SplitPlan([decided[r] for r in roots], counts)
