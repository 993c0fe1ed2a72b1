"""Inference settings: every threshold and switch of the predictor, the paper's presets,
and the one rule that combines settings from several sources (`resolve_settings`).

Where settings come from, lowest precedence first:

1. the preset (`paper` unless a source names another one),
2. the checkpoint's `inference` block (what its training run's config set),
3. the run's config `inference` block (`eval.py` / `predict.py` / the training config;
   a null value there means "not set here"),
4. explicit arguments (Python keywords, the metrics callback's own overrides).

Each source may name a `preset`; the highest one that does picks the base. The YAML files
in `conf/inference/` only choose a preset and list the keys with null: the values live here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = ["DECODERS", "OVERLAP_RULES", "PRESETS", "TILING_MODES", "InferenceSettings",
           "resolve_settings"]

OVERLAP_RULES = ("score", "release", "argmax")
# SAC's point prompts (cellsam.inference.point_prompts): how touching nuclei in one
# component are split, where the positive point goes, where negatives go.
PROMPT_SPLITS = ("centre", "distance", "none")
PROMPT_SELECTIONS = ("centroid", "max_prob")
PROMPT_NEGATIVES = ("none", "background", "neighbours", "both")
TILING_MODES = ("auto", "always", "never")
DECODERS = ("fast", "standard")


@dataclass(frozen=True)
class InferenceSettings:
    """Thresholds, post-processing, batching, tiling and preprocessing of the predictor.

    Presets (REFERENCE section 3): `paper` (box 0.4, IoU 0.4, mask 0.5, argmax overlaps) and
    `release` (box 0.4 adjusted by k-means, IoU 0.5, mask 0.4, lower-scored mask wins).
    """

    box_threshold: float = 0.4
    kmeans_adjust: bool = False  # 0.66 * box_threshold + 0.33 * mean of 2-means centres
    iou_threshold: float = 0.4  # drop masks whose predicted IoU is below this (< 0: keep all)
    mask_threshold: float = 0.5  # on sigmoid(mask logit)
    min_area: int = 25  # pixels, at the original image resolution
    fill_holes: bool = True
    remove_islands: bool = True  # keep the largest connected component
    overlap: str = "argmax"  # score | release | argmax (see `compose_labels`)
    box_batch_size: int = 64  # box prompts decoded together
    decoder: str = "fast"  # fast | standard (same masks; see cellsam.inference.decode)
    max_detections: int | None = None  # keep at most this many boxes (highest scores)
    # Drop a cell whose mask shares more than this fraction of the smaller of the two areas
    # with a higher-scored kept cell (mask NMS). null: keep all, as the paper and release do.
    duplicate_overlap: float | None = None
    # Masks are upsampled only inside the box grown by this fraction of its size (+2 px);
    # pixels further out count as background. null: whole image (exact, slow, memory-heavy).
    mask_margin: float | None = 0.5
    tiling: str = "auto"  # auto: tile images whose larger side exceeds tile_limit
    tile_limit: int = 1024
    tile_size: int = 512
    tile_overlap: float = 0.25  # fraction of tile_size shared by neighbouring tiles
    tile_batch_size: int = 4  # tiles through the ViT together
    percentile: float = 99.9
    clahe: bool = True
    clahe_kernel: int = 128
    # SAC pipeline only (checkpoints of stage sac): the prompter's maps -> point prompts.
    prompt_threshold: float = 0.5  # on the foreground probability
    prompt_min_area: int = 8  # px of the prompt map (model input); smaller components: none
    prompt_split: str = "centre"  # centre | distance | none: splitting touching nuclei
    prompt_selection: str = "centroid"  # centroid | max_prob: the positive point (SAC: centroid)
    points_per_cell: int = 1  # positives per component (SAC's prompt amplification: > 1)
    prompt_negatives: str = "both"  # none | background | neighbours | both
    preset: str = field(default="paper", compare=False)

    def __post_init__(self) -> None:
        if self.overlap not in OVERLAP_RULES:
            raise ValueError(f"overlap rule {self.overlap!r}: choose from {OVERLAP_RULES}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder {self.decoder!r}: choose from {DECODERS}")
        if self.tiling not in TILING_MODES:
            raise ValueError(f"tiling {self.tiling!r}: choose from {TILING_MODES}")
        if not 0.0 <= self.box_threshold <= 1.0:
            raise ValueError(f"box_threshold must be in [0, 1], got {self.box_threshold}")
        if not self.iou_threshold <= 1.0:  # predicted IoU is unbounded: negative keeps all
            raise ValueError(f"iou_threshold must be <= 1, got {self.iou_threshold}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")
        if self.box_batch_size < 1 or self.tile_batch_size < 1:
            raise ValueError("box_batch_size and tile_batch_size must be >= 1")
        if self.duplicate_overlap is not None and not 0.0 < self.duplicate_overlap <= 1.0:
            raise ValueError(f"duplicate_overlap must be in (0, 1] or None, got "
                             f"{self.duplicate_overlap}")
        if not 0.0 <= self.tile_overlap < 0.5:
            raise ValueError(f"tile_overlap must be in [0, 0.5), got {self.tile_overlap}")
        for name, value, choices in (("prompt_split", self.prompt_split, PROMPT_SPLITS),
                                     ("prompt_selection", self.prompt_selection,
                                      PROMPT_SELECTIONS),
                                     ("prompt_negatives", self.prompt_negatives,
                                      PROMPT_NEGATIVES)):
            if value not in choices:
                raise ValueError(f"{name} {value!r}: choose from {choices}")
        if not 0.0 < self.prompt_threshold < 1.0:
            raise ValueError(f"prompt_threshold must be in (0, 1), got {self.prompt_threshold}")
        if self.points_per_cell < 1 or self.prompt_min_area < 0:
            raise ValueError(f"points_per_cell must be >= 1 and prompt_min_area >= 0, got "
                             f"{self.points_per_cell}, {self.prompt_min_area}")

    @property
    def mask_logit_threshold(self) -> float:
        """`sigmoid(x) > t` <=> `x > log(t / (1 - t))`: threshold logits, no sigmoid needed."""
        t = self.mask_threshold
        return math.log(t / (1.0 - t))

    @classmethod
    def from_preset(cls, name: str = "paper", **overrides: Any) -> InferenceSettings:
        """A preset's settings with keyword overrides (unknown keys raise `TypeError`)."""
        if name not in PRESETS:
            raise ValueError(f"unknown inference preset {name!r}; choose from {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def changed_from_preset(self) -> dict[str, Any]:
        """The settings that differ from this preset's values (for result titles)."""
        base = PRESETS.get(self.preset, PRESETS["paper"])
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.compare and getattr(self, f.name) != getattr(base, f.name)}


PRESETS: dict[str, InferenceSettings] = {
    "paper": InferenceSettings(),
    "release": InferenceSettings(
        kmeans_adjust=True, iou_threshold=0.5, mask_threshold=0.4, overlap="release",
        preset="release",
    ),
}


# A value the user writes to mean None where null means "not set here" (config blocks).
NONE_WORDS = ("none", "off")


def _settings_in(block: Mapping[str, Any] | None, source: str) -> dict[str, Any]:
    """The settings a source sets: nulls dropped ("not set"), "none"/"off" -> None, unknown
    keys refused (an explicit argument or config key with a typo must not pass silently)."""
    types = {f.name: str(f.type) for f in fields(InferenceSettings)}
    out: dict[str, Any] = {}
    for key, value in dict(block or {}).items():
        if key not in types:
            raise ValueError(f"{source}: unknown inference setting {key!r}; "
                             f"choose from {sorted(types)}")
        if value is None:
            continue
        # only where None is a value: `prompt_negatives: none` is the word itself
        if isinstance(value, str) and value.lower() in NONE_WORDS and "None" in types[key]:
            value = None
        out[key] = value
    return out


def resolve_settings(
    checkpoint: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    explicit: Mapping[str, Any] | None = None,
    preset: str | None = None,
) -> InferenceSettings:
    """The predictor's settings: preset < checkpoint < config < explicit (module doc).

    Args:
        checkpoint: a checkpoint's `meta["inference"]` (old checkpoints hold full blocks,
            new ones only what their run changed; unknown keys of old versions are ignored).
        config: the run's `inference` config block.
        explicit: keyword overrides.
        preset: an explicit preset name, above every source's `preset`.
    """
    known = {f.name for f in fields(InferenceSettings)}
    ckpt = {k: v for k, v in dict(checkpoint or {}).items() if k in known}
    layers = [_settings_in(ckpt, "checkpoint"), _settings_in(config, "config"),
              _settings_in(explicit, "arguments")]
    if preset is not None:
        layers.append({"preset": preset})
    name = next((layer["preset"] for layer in reversed(layers) if "preset" in layer), "paper")
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if k != "preset"})
    return InferenceSettings.from_preset(str(name), **values)
