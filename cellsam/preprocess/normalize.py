"""Intensity normalisation of CellSAM's 3-channel images (paper, Appendix A).

Per channel: clip at the given percentile (99.9th) of the channel's non-zero values,
rescale linearly so that the channel minimum maps to 0 and the clip value to 1, then
optionally apply CLAHE (`skimage.exposure.equalize_adapthist`, kernel_size 128). A channel
without non-zero values (the blank red channel, an absent nuclear channel) stays zero, as
does a constant channel (no contrast to rescale).
"""

from __future__ import annotations

import numpy as np
from skimage.exposure import equalize_adapthist


def rescale_channel(channel: np.ndarray, percentile: float = 99.9) -> np.ndarray | None:
    """Clip one channel `[H, W]` at `percentile` of its non-zero values; rescale to [0, 1].

    Returns float64 `[H, W]`, or None when the channel is empty or constant.
    """
    ch = np.asarray(channel, dtype=np.float64)
    nonzero = ch[ch != 0]
    if nonzero.size == 0:
        return None
    hi = float(np.percentile(nonzero, percentile))
    lo = float(ch.min())
    if not hi > lo:
        return None
    return (np.clip(ch, lo, hi) - lo) / (hi - lo)


def normalize_channels(
    image: np.ndarray,
    percentile: float = 99.9,
    clahe: bool = True,
    clahe_kernel: int = 128,
) -> np.ndarray:
    """Normalise `image` `[3, H, W]` (any real dtype) channel by channel -> `[3, H, W]` float32.

    Output values lie in [0, 1]; empty or constant channels are all zero.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"expected [C, H, W], got shape {image.shape}")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    out = np.zeros(image.shape, dtype=np.float32)
    for c in range(image.shape[0]):
        ch = rescale_channel(image[c], percentile)
        if ch is None:
            continue
        if clahe:
            ch = equalize_adapthist(ch, kernel_size=clahe_kernel)
        out[c] = np.clip(ch, 0.0, 1.0)
    return out
