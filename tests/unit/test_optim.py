"""The stages' AdamW: fused where possible, same updates as PyTorch's default loop."""

from __future__ import annotations

import torch

from cellsam.systems.common import adamw


def test_fused_adamw_on_cpu_matches_the_default_loop() -> None:
    torch.manual_seed(0)
    weights = [torch.randn(5, 3), torch.randn(7)]
    grads = [torch.randn_like(w) for w in weights]
    results = []
    for fused in (True, False):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        groups = [{"params": params[:1], "lr": 1e-2}, {"params": params[1:], "lr": 1e-3}]
        opt = adamw(groups, lr=1e-3, weight_decay=1e-2) if fused else torch.optim.AdamW(
            groups, lr=1e-3, weight_decay=1e-2
        )
        assert bool(opt.defaults.get("fused")) is fused
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        results.append([p.detach() for p in params])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert not torch.equal(results[0][0], weights[0])


def test_adamw_falls_back_where_fusing_is_not_supported() -> None:
    meta = torch.nn.Parameter(torch.empty(3, device="meta"))
    assert not adamw([meta], lr=1e-3, weight_decay=0.0).defaults.get("fused")
