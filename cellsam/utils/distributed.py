"""Small helpers for exact metrics under DDP (no Lightning inside)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of `value` over ranks (identity without a process group)."""
    if world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world_size()
    return value


def gather_records(
    records: list[dict[str, Any]], key: tuple[str, ...] = ("dataset", "index")
) -> list[dict[str, Any]]:
    """All ranks' per-image records on every rank, each image once.

    The distributed sampler pads the last batch with repeated images; dropping repeats by
    `key` makes the gathered set equal to a single-process run's. Sorted by key so every
    rank computes metrics on the same order.
    """
    if world_size() > 1:
        parts: list[list[dict[str, Any]] | None] = [None] * world_size()
        dist.all_gather_object(parts, records)
        records = [r for part in parts for r in (part or [])]
    unique: dict[tuple, dict[str, Any]] = {}
    for r in records:
        unique.setdefault(tuple(r[k] for k in key), r)
    return [unique[k] for k in sorted(unique)]
