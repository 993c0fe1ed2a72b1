"""Image preparation shared by the data converters (`data_prep`) and the inference predictor.

- `place_channels`: any image + channel map -> `[3, H, W]` (blank, nuclear, whole-cell).
- `normalize_channels`: percentile clip, rescale to [0, 1], optional CLAHE.
- `tile_starts`, `pad_to`, `iter_tiles`: 512x512 tiles with 25% overlap, zero padding.
- `filter_labels`: drop disjoint and 1-px-thin objects, renumber 1..N.
"""

from cellsam.preprocess.channels import (
    ChannelMap,
    ChannelSpec,
    channels_first,
    parse_channel_map,
    place_channels,
)
from cellsam.preprocess.normalize import normalize_channels, rescale_channel
from cellsam.preprocess.tiling import (
    OVERLAP,
    TILE,
    Tile,
    filter_labels,
    iter_tiles,
    pad_to,
    tile_starts,
)

__all__ = [
    "ChannelMap",
    "ChannelSpec",
    "OVERLAP",
    "TILE",
    "Tile",
    "channels_first",
    "filter_labels",
    "iter_tiles",
    "normalize_channels",
    "pad_to",
    "parse_channel_map",
    "place_channels",
    "rescale_channel",
    "tile_starts",
]
