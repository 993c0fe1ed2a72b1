"""Training samplers: the order depends only on (seed, epoch) and resumes mid-epoch."""

from __future__ import annotations

import torch

from cellsam.data.samplers import WeightedSampler, shuffle_sampler


def _epoch(sampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_order_depends_on_seed_and_epoch_only():
    data = list(range(12))
    a, b = shuffle_sampler(data, seed=3), shuffle_sampler(data, seed=3)
    assert _epoch(a, 5) == _epoch(b, 5) and sorted(_epoch(a, 5)) == data
    assert _epoch(a, 5) != _epoch(a, 6)
    weights = torch.tensor([1.0] * 6 + [3.0] * 6)
    w1, w2 = WeightedSampler(data, weights, 3), WeightedSampler(data, weights, 3)
    assert _epoch(w1, 2) == _epoch(w2, 2) != _epoch(w1, 3)
    assert isinstance(w1, torch.utils.data.WeightedRandomSampler)


def test_weighted_draws_follow_the_weights():
    data = list(range(1000))
    weights = torch.tensor([1.0] * 500 + [3.0] * 500)
    draws = torch.tensor(_epoch(WeightedSampler(data, weights, 0), 0))
    share = float((draws >= 500).float().mean())
    assert len(draws) == 1000 and 0.70 < share < 0.80  # expected 0.75


def test_resume_mid_epoch_continues_the_same_order():
    data = list(range(10))
    for make in (lambda: shuffle_sampler(data, 1),
                 lambda: WeightedSampler(data, torch.ones(10), 1)):
        full = _epoch(make(), 4)
        first = make()
        first.set_epoch(4)
        it = iter(first)
        seen = [next(it) for _ in range(4)]
        state = first.state_dict()
        resumed = make()
        resumed.load_state_dict(state)
        assert seen + _epoch(resumed, 4) == full


def test_ranks_split_one_epoch():
    data = list(range(10))
    parts = []
    for rank in (0, 1):
        s = WeightedSampler(data, torch.ones(10), 1)
        s.num_replicas, s.rank = 2, rank
        s.num_samples, s.total_size = 5, 10
        parts.append(_epoch(s, 0))
    whole = _epoch(WeightedSampler(data, torch.ones(10), 1), 0)
    assert parts[0] == whole[0::2] and parts[1] == whole[1::2]
