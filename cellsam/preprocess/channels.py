"""Channel placement: any microscopy image -> the model's 3 channels (blank, nuclear, whole-cell).

CellSAM reads images as RGB = (blank, nuclear, whole-cell). The whole-cell (blue) slot must
never be empty: data that has only a nuclear stain (DSB, BriFiSeg) put it in blue, as does
any single-channel image (phase contrast, brightfield).

A *channel map* says which input channel(s) feed each slot::

    {"nuclear": 0, "whole_cell": 1}      # channel 0 -> green, channel 1 -> blue
    {"whole_cell": [0, 1, 2]}            # mean of channels 0..2 -> blue
    {"nuclear": "all"}                   # mean of all channels -> nuclear, moved to blue
    None                                 # 1 channel -> blue; several -> their mean -> blue

Shared by the data converters (`data_prep`) and the inference predictor, so that training
and inference see images prepared the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

ChannelSpec = int | Sequence[int] | str | None
ChannelMap = Mapping[str, ChannelSpec]

SLOTS = ("blank", "nuclear", "whole_cell")
MAP_KEYS = ("nuclear", "whole_cell")
MAX_CHANNELS = 16  # an axis this short (or shorter) may be a channel axis


def channels_first(image: np.ndarray, channel_axis: int | None = None) -> np.ndarray:
    """Return `image` as `[C, H, W]` from `[H, W]`, `[H, W, C]` or `[C, H, W]`.

    Without `channel_axis` a 3-D array's channel axis is the first or last one, whichever is
    at most `MAX_CHANNELS` long (the shorter one when both are); pass it explicitly when
    that guess cannot tell. Raises `ValueError` for other dimensionalities, empty arrays,
    non-numeric dtypes and NaN or infinite values.
    """
    image = np.asarray(image)
    if image.size == 0:
        raise ValueError(f"empty image (shape {image.shape})")
    if image.dtype.kind not in "biuf":
        raise ValueError(f"image dtype {image.dtype} is not numeric")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    if image.ndim == 2:
        return image[None]
    if image.ndim != 3:
        raise ValueError(
            f"expected an image [H, W], [H, W, C] or [C, H, W]; got {image.ndim}-D shape "
            f"{image.shape} (split stacks and time series into single images first)"
        )
    if channel_axis is None:
        first, last = image.shape[0], image.shape[-1]
        if last <= MAX_CHANNELS and (first > MAX_CHANNELS or last < first):
            channel_axis = -1
        elif first <= MAX_CHANNELS and (last > MAX_CHANNELS or first < last):
            channel_axis = 0
        else:
            raise ValueError(
                f"cannot tell the channel axis of shape {image.shape}: pass channel_axis"
            )
    if channel_axis not in (0, -1, 2):
        raise ValueError(f"channel_axis must be 0 or -1 (first or last), got {channel_axis}")
    return image if channel_axis == 0 else np.moveaxis(image, -1, 0)


def _resolve(spec: ChannelSpec, chw: np.ndarray, key: str) -> np.ndarray | None:
    """The `[H, W]` float32 image one map entry selects (None for an empty slot)."""
    n = chw.shape[0]
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None
    if isinstance(spec, str):
        if spec.lower() != "all":
            raise ValueError(
                f"channel map {key}={spec!r}: use an index, a list of indices or 'all'"
            )
        idx = list(range(n))
    elif isinstance(spec, (int, np.integer)):
        idx = [int(spec)]
    else:
        idx = [int(i) for i in spec]
        if not idx:
            raise ValueError(f"channel map {key}: empty list of channels")
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise ValueError(f"channel map {key}={spec!r}: channel(s) {bad} not in an image with {n}")
    if len(idx) == 1:
        return chw[idx[0]].astype(np.float32)
    return chw[idx].astype(np.float32).mean(axis=0)


def place_channels(
    image: np.ndarray, channel_map: ChannelMap | None = None, channel_axis: int | None = None
) -> np.ndarray:
    """Arrange `image` into the model's channels `[3, H, W]` float32 (raw intensities).

    `image` is `[H, W]`, `[H, W, C]` or `[C, H, W]` (see `channels_first`). `channel_map`
    maps "nuclear" and/or "whole_cell" to a channel index, a list of indices (averaged),
    "all" (mean of every channel) or None (empty). Without a map, a single channel goes to
    the whole-cell slot and several channels are averaged into it. A nuclear channel with no
    whole-cell channel moves to the whole-cell slot (CellSAM's rule for nuclear-only data).
    Slot 0 (red) is always zero. No intensity scaling happens here.
    """
    chw = channels_first(image, channel_axis)
    if channel_map is None:
        channel_map = {"whole_cell": 0 if chw.shape[0] == 1 else "all"}
    unknown = sorted(set(channel_map) - set(MAP_KEYS))
    if unknown:
        raise ValueError(f"channel map keys {unknown} not understood; use {list(MAP_KEYS)}")
    nuclear = _resolve(channel_map.get("nuclear"), chw, "nuclear")
    whole = _resolve(channel_map.get("whole_cell"), chw, "whole_cell")
    if whole is None and nuclear is None:
        raise ValueError(f"channel map {dict(channel_map)} selects no channel")
    if whole is None:
        nuclear, whole = None, nuclear
    out = np.zeros((3, *chw.shape[1:]), dtype=np.float32)
    if nuclear is not None:
        out[1] = nuclear
    out[2] = whole
    return out


def parse_channel_map(text: str | None) -> dict[str, ChannelSpec] | None:
    """Parse a command-line channel map such as `nuclear=0,whole_cell=1+2` or `whole_cell=all`.

    `a+b` averages channels a and b; `none` leaves a slot empty; an empty string gives None
    (the default placement).
    """
    if text is None or not text.strip():
        return None
    out: dict[str, ChannelSpec] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in MAP_KEYS:
            raise ValueError(
                f"channel map {text!r}: each entry is <slot>=<channels>, "
                f"slot in {list(MAP_KEYS)}"
            )
        if value.lower() in ("all", "none"):
            out[key] = value.lower() if value.lower() == "all" else None
            continue
        try:
            idx = [int(v) for v in value.split("+")]
        except ValueError:
            raise ValueError(
                f"channel map {text!r}: {value!r} is not an index, a+b, all or none"
            ) from None
        out[key] = idx[0] if len(idx) == 1 else idx
    return out
