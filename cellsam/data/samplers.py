"""Training samplers whose order depends only on (seed, epoch), so a run resumed from a
checkpoint — mid-epoch or at an epoch boundary, in one process or under DDP — draws exactly
the images an uninterrupted run would.

Both are `torchdata`'s `StatefulDistributedSampler` (a `DistributedSampler` that also
saves how many indices it has yielded): Lightning calls `set_epoch` at every epoch start and
leaves `DistributedSampler` instances in place under DDP, and the `StatefulDataLoader` stores
the sampler's position in each checkpoint.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sized

import torch
import torch.distributed as dist
from torch.utils.data import WeightedRandomSampler

try:
    from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler
except ImportError:  # pragma: no cover - without torchdata: same order, no mid-epoch position
    from torch.utils.data import DistributedSampler as StatefulDistributedSampler


def _replicas() -> tuple[int, int]:
    """(world size, rank) of the process group, or (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def shuffle_sampler(dataset: Sized, seed: int) -> StatefulDistributedSampler:
    """Uniform shuffle, a new permutation per epoch, split between DDP ranks."""
    world, rank = _replicas()
    return StatefulDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                      seed=seed, drop_last=False)


class WeightedSampler(StatefulDistributedSampler, WeightedRandomSampler):
    """`len(dataset)` draws with replacement, item `i` with probability `weights[i]`, per epoch
    from `seed + epoch`; each rank takes every `world`-th draw.

    Also a `WeightedRandomSampler` (same `weights` and `replacement`) for code that asks
    for one; the behaviour is this class's.
    """

    def __init__(self, dataset: Sized, weights: torch.Tensor, seed: int) -> None:
        world, rank = _replicas()
        StatefulDistributedSampler.__init__(self, dataset, num_replicas=world, rank=rank,
                                            shuffle=True, seed=seed, drop_last=False)
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.replacement, self.generator = True, None

    def _indices(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.total_size, replacement=True,
                                  generator=generator).tolist()
        return draws[self.rank:self.total_size:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        # As StatefulDistributedSampler.__iter__, with weighted draws instead of a permutation.
        self.yielded = 0
        if getattr(self, "next_yielded", None) is not None:
            self.yielded, self.next_yielded = self.next_yielded, None
        for index in itertools.islice(self._indices(), self.yielded, None):
            self.yielded += 1
            yield index
