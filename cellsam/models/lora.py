"""Low-rank adaptation (LoRA) of the query and value projections of SAM image encoders.

Both encoders compute queries, keys and values with one fused linear layer, `attn.qkv`
(`dim -> 3 * dim`), but lay its output out differently:

- segment-anything's ViT `Attention`: `[q | k | v]`, each `dim` wide (the output is
  reshaped `[..., 3, heads, head_dim]`);
- TinyViT's `WindowAttention` (`cellsam.models.tinyvit`): per head `[q_h | k_h | v_h]`,
  each `head_dim` wide (the output is reshaped `[..., heads, 3 * head_dim]`).

`LoRAQKV` replaces such a layer and adds, on the output rows of the query and of the value
(`q_index`, `v_index`), `scale * B @ A @ dropout(x)` with `A: [r, in]` (Kaiming-uniform) and
`B: [dim, r]` (zeros), `scale = alpha / r`; the key rows are left alone. With `B = 0` the
adapted layer gives exactly the base output. It subclasses `nn.Linear` and keeps the base
`weight` and `bias` under their names, so the encoder's state-dict keys of the base weights
do not change (a base checkpoint still loads into the adapted encoder).

`apply_lora` adapts the chosen attention blocks and freezes every base weight,
`merge_lora` folds the adapters into the base weights for inference, `lora_state_dict`
keeps the LoRA tensors only, and `lora_checkpoint` / `load_lora_checkpoint` save and load
them together with the file name and sha256 of the base checkpoint, refusing another base.
Pure torch (no Lightning, no Hydra).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention as ViTAttention
from torch import Tensor, nn

from cellsam.models.tinyvit import WindowAttention

LORA_PREFIX = "lora_"
CHECKPOINT_KIND = "cellsam_lora"


def qv_indices(attn: nn.Module) -> tuple[Tensor, Tensor]:
    """Output rows of `attn.qkv` that hold the query and the value, `[dim]` each, for a
    segment-anything ViT `Attention` or a TinyViT `WindowAttention`."""
    dim = attn.qkv.in_features
    if attn.qkv.out_features != 3 * dim:
        raise ValueError(f"qkv of {type(attn).__name__} maps {dim} -> "
                         f"{attn.qkv.out_features}, expected 3 * {dim}")
    if isinstance(attn, WindowAttention):
        heads, d = attn.num_heads, attn.head_dim
        if heads * d != dim:
            raise ValueError(f"TinyViT attention: {heads} heads x {d} != {dim}")
        start = torch.arange(heads) * 3 * d  # per head [q_h | k_h | v_h]
        within = torch.arange(d)
        q = (start[:, None] + within[None]).reshape(-1)
        return q, q + 2 * d
    if isinstance(attn, ViTAttention):
        q = torch.arange(dim)  # [q | k | v]
        return q, q + 2 * dim
    raise TypeError(f"no q/v layout known for {type(attn).__name__}")


def attention_modules(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's attention modules with a fused `qkv`, in block order (ViT: its
    `blocks`; TinyViT: the attention blocks of stages 1-3, counted across stages)."""
    return [m for m in encoder.modules() if isinstance(m, ViTAttention | WindowAttention)]


class LoRAQKV(nn.Linear):
    """A fused `qkv` linear with LoRA on its query and value rows.

    `out = x W^T + b + scale * scatter(q_index: B_q A_q d(x), v_index: B_v A_v d(x))`,
    `d` dropout, `scale = alpha / rank`; `[..., in] -> [..., out]` like the base.
    The base `weight` and `bias` are the base layer's own parameters (shared, not copied).
    """

    def __init__(self, base: nn.Linear, q_index: Tensor, v_index: Tensor, rank: int,
                 alpha: float, dropout: float = 0.0) -> None:
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank, self.alpha = int(rank), float(alpha)
        self.scale = self.alpha / self.rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.register_buffer("q_index", q_index.to(base.weight.device), persistent=False)
        self.register_buffer("v_index", v_index.to(base.weight.device), persistent=False)
        n_q, n_v = len(q_index), len(v_index)
        self.lora_a_q = nn.Parameter(torch.empty(self.rank, self.in_features, **kw))
        self.lora_b_q = nn.Parameter(torch.zeros(n_q, self.rank, **kw))
        self.lora_a_v = nn.Parameter(torch.empty(self.rank, self.in_features, **kw))
        self.lora_b_v = nn.Parameter(torch.zeros(n_v, self.rank, **kw))
        # As nn.Linear (and peft) initialise a weight; B = 0 makes the start exact.
        nn.init.kaiming_uniform_(self.lora_a_q, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.lora_a_v, a=math.sqrt(5))

    def lora_delta(self, x: Tensor) -> Tensor:
        """The LoRA term alone, `[..., out]` (zero on the key rows)."""
        h = self.dropout(x)
        dq = F.linear(F.linear(h, self.lora_a_q), self.lora_b_q)
        dv = F.linear(F.linear(h, self.lora_a_v), self.lora_b_v)
        delta = x.new_zeros(*x.shape[:-1], self.out_features)
        delta = delta.index_add(-1, self.q_index, dq * self.scale)
        return delta.index_add(-1, self.v_index, dv * self.scale)

    def delta_weight(self) -> Tensor:
        """`[out, in]`: what merging adds to `weight` (zero on the key rows)."""
        w = torch.zeros_like(self.weight)
        w = w.index_add(0, self.q_index, self.scale * (self.lora_b_q @ self.lora_a_q))
        return w.index_add(0, self.v_index, self.scale * (self.lora_b_v @ self.lora_a_v))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias) + self.lora_delta(x)

    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` with the adapters folded into its weight."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.weight + self.delta_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        lin.weight.requires_grad_(self.weight.requires_grad)
        if self.bias is not None:
            lin.bias.requires_grad_(self.bias.requires_grad)
        return lin

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, alpha={self.alpha}")


def apply_lora(image_encoder: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
               blocks: Sequence[int] | None = None) -> list[str]:
    """Adapt the q and v projections of the chosen attention blocks (indices into
    `attention_modules(image_encoder)`, None: all) and freeze all base weights of the encoder.

    Returns the names (relative to `image_encoder`) of the LoRA parameters, the only ones
    left with `requires_grad`. The configuration is kept as `image_encoder.lora_config`.
    """
    attns = attention_modules(image_encoder)
    if not attns:
        raise ValueError(f"{type(image_encoder).__name__} has no attention with a fused qkv")
    if any(isinstance(a.qkv, LoRAQKV) for a in attns):
        raise ValueError("the encoder already has LoRA adapters")
    chosen = list(range(len(attns))) if blocks is None else sorted({int(b) for b in blocks})
    bad = [b for b in chosen if not 0 <= b < len(attns)]
    if bad:
        raise ValueError(f"LoRA blocks {bad} out of range: the encoder has {len(attns)} "
                         "attention blocks")
    for p in image_encoder.parameters():
        p.requires_grad_(False)
    for b in chosen:
        attn = attns[b]
        q, v = qv_indices(attn)
        attn.qkv = LoRAQKV(attn.qkv, q, v, rank, alpha, dropout)
    image_encoder.lora_config = {"rank": int(rank), "alpha": float(alpha),
                                 "dropout": float(dropout), "blocks": chosen}
    names = [n for n, _ in lora_parameters(image_encoder)]
    for _, p in lora_parameters(image_encoder):
        p.requires_grad_(True)
    return names


def lora_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """`(name, parameter)` of every LoRA tensor in `model`."""
    return [(n, p) for n, p in model.named_parameters()
            if n.rsplit(".", 1)[-1].startswith(LORA_PREFIX)]


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The LoRA tensors of `model` only (detached copies), keyed as in `model.state_dict()`."""
    return {n: p.detach().clone() for n, p in lora_parameters(model)}


def merge_lora(encoder: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put back plain `nn.Linear` layers (in
    place; returns `encoder`). The encoder then has its base state-dict keys only."""
    for m in encoder.modules():
        if isinstance(getattr(m, "qkv", None), LoRAQKV):
            m.qkv = m.qkv.merged()
    if hasattr(encoder, "lora_config"):
        del encoder.lora_config
    return encoder


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _lora_config(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """Prefix (module path) and `lora_config` of the adapted encoder inside `model`."""
    found = [(n, m.lora_config) for n, m in model.named_modules() if hasattr(m, "lora_config")]
    if len(found) != 1:
        raise ValueError(f"expected one LoRA-adapted encoder in the model, found {len(found)}")
    return found[0]


def lora_checkpoint(model: nn.Module, base_path: str | Path) -> dict[str, Any]:
    """A small checkpoint: the LoRA tensors, the LoRA configuration (rank, alpha, dropout,
    blocks, and where the adapted encoder sits in `model`) and the base checkpoint's file
    name and sha256."""
    prefix, cfg = _lora_config(model)
    return {
        "kind": CHECKPOINT_KIND,
        "lora": lora_state_dict(model),
        "config": {**cfg, "module": prefix},
        "base": {"file": Path(base_path).name, "sha256": file_sha256(base_path)},
    }


def load_lora_checkpoint(model: nn.Module, ckpt: dict[str, Any],
                         base_path: str | Path) -> list[str]:
    """Load a `lora_checkpoint` into `model`, whose base weights come from `base_path`.

    Refuses (ValueError) when `base_path`'s sha256 is not the one the checkpoint was made
    on. Adapters are added first (with the checkpoint's configuration) if the model has
    none; an adapted model must have the same rank, alpha and blocks. Returns the loaded keys.
    """
    if ckpt.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"not a LoRA checkpoint (kind {ckpt.get('kind')!r})")
    want, base = ckpt["base"], Path(base_path)
    have = file_sha256(base)
    if have != want["sha256"]:
        raise ValueError(
            f"LoRA checkpoint was trained on base {want['file']!r} (sha256 {want['sha256']}), "
            f"but the given base {base.name!r} has sha256 {have}: refusing to load")
    cfg = ckpt["config"]
    if not lora_parameters(model):
        target = model.get_submodule(cfg["module"]) if cfg["module"] else model
        apply_lora(target, cfg["rank"], cfg["alpha"], cfg.get("dropout", 0.0), cfg["blocks"])
    prefix, now = _lora_config(model)
    mismatch = [k for k in ("rank", "alpha", "blocks") if now[k] != cfg[k]]
    if mismatch or prefix != cfg["module"]:
        raise ValueError(f"model's LoRA configuration {now} (at {prefix!r}) differs from the "
                         f"checkpoint's {cfg}")
    params = dict(lora_parameters(model))
    if set(params) != set(ckpt["lora"]):
        missing = sorted(set(params) - set(ckpt["lora"]))
        extra = sorted(set(ckpt["lora"]) - set(params))
        raise ValueError(f"LoRA keys differ: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for n, t in ckpt["lora"].items():
            if params[n].shape != t.shape:
                raise ValueError(f"LoRA tensor {n}: shape {tuple(t.shape)} in the checkpoint, "
                                 f"{tuple(params[n].shape)} in the model")
            params[n].copy_(t)
    return sorted(params)
