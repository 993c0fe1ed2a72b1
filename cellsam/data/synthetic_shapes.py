"""Shape rasterisation and object placement for the synthetic cell generator.

Every object is rasterised in its own bounding-box crop (never the full image) as a
boolean mask plus a "depth" map in [0, 1] (0 at the outline, 1 on the medial axis/centre)
that the renderers turn into intensity profiles. Objects are painted into a shared label
image only where it is still free, so the label is exactly what the renderer sees and an
object painted earlier is never cut by a later one. Pixel (i, j) has its centre at (i, j).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_N_ANGLES = 256  # angular resolution of an outline look-up table (< 1 px error at r = 40)


def upsample_linear(low: np.ndarray, factor: int, size: int) -> np.ndarray:
    """Bilinear upsampling of `low` `[g, g]` by an integer `factor` to `[size, size]`
    float32 (sample k sits at pixel k * factor); needs g > size / factor.

    Pure broadcasting: no gathers.
    """
    n = -(-size // factor)
    t = np.arange(factor, dtype=np.float32) / factor
    rows = low[:n, None, :] + (low[1 : n + 1] - low[:n])[:, None, :] * t[None, :, None]
    rows = rows.reshape(n * factor, -1)[:size]  # [size, g]
    out = rows[:, :n, None] + (rows[:, 1 : n + 1] - rows[:, :n])[:, :, None] * t
    return out.reshape(size, n * factor)[:, :size]


def smooth_low(rng: np.random.Generator, size: int, knots: int) -> tuple[np.ndarray, int]:
    """Coarse smooth noise `[g, g]` and its upsampling factor for `smooth_field`.

    Zero mean and unit std; ~3 samples per correlation length (size/knots px).
    """
    step = size / max(1, min(int(knots), size))
    factor = max(1, int(step / 3))
    g = -(-size // factor) + 1
    low = ndimage.gaussian_filter(
        rng.standard_normal((g, g), dtype=np.float32), step / factor / 2.5, mode="wrap"
    )
    low -= low.mean()
    low /= max(float(low[::max(1, g // 64), ::max(1, g // 64)].std()), 1e-6)
    return low, factor


def smooth_field(rng: np.random.Generator, size: int, knots: int) -> np.ndarray:
    """Smooth random field `[size, size]` float32, about zero mean and unit std, with
    correlation length about size/knots pixels.

    Filtered noise on a grid just fine enough for that length, bilinearly upsampled: 1-3
    ms at 512 px. (No BLAS on purpose: multithreaded BLAS on small products is very slow
    on busy machines and inside data-loader workers.)
    """
    low, factor = smooth_low(rng, size, knots)
    if factor == 1:
        return low[:size, :size]
    return upsample_linear(low, factor, size)


@dataclass
class Shape:
    """One rasterised object: crop origin (y0, x0) in image pixels, `mask`/`depth` `[h, w]`.

    `aux` `[h, w]` (optional) is an inner structure (nucleus, vacuole) the renderer uses.
    `simple`: the full raster is one region by construction (convex-like), so a placement
    that shows all of it needs no connectivity check.
    """

    y0: int
    x0: int
    mask: np.ndarray
    depth: np.ndarray
    aux: np.ndarray | None = None
    simple: bool = False


def _grid(cy: float, cx: float, hy: float, hx: float) -> tuple[int, int, np.ndarray, np.ndarray]:
    y0, x0 = int(np.floor(cy - hy)), int(np.floor(cx - hx))
    y1, x1 = int(np.ceil(cy + hy)) + 1, int(np.ceil(cx + hx)) + 1
    yy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
    xx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
    return y0, x0, yy, xx


_PHI = np.linspace(-np.pi, np.pi, _N_ANGLES, endpoint=False, dtype=np.float32)


def outline_bank(
    rng: np.random.Generator, count: int, roughness: float, n_harmonics: int, max_lobes: int = 0
) -> np.ndarray:
    """`count` random outlines `[count, _N_ANGLES]`: radius factor per angle, 1 + random
    harmonics (+ up to `max_lobes` narrow protrusions). Made in one batch per image; each
    object picks one and its own size, axis ratio and rotation, which keeps shapes varied."""
    k = np.arange(2, 2 + n_harmonics, dtype=np.float32)[None, :, None]
    amp = rng.normal(0, 1, (count, n_harmonics, 1)) * roughness / np.sqrt(k - 1)
    phase = rng.uniform(0, 2 * np.pi, (count, n_harmonics, 1))
    f = 1 + (amp * np.cos(k * _PHI + phase)).sum(1)
    if max_lobes:  # filopodia-like lobes of spread cultured cells
        centre = rng.uniform(-np.pi, np.pi, (count, max_lobes, 1))
        height = rng.uniform(0.3, 1.0, (count, max_lobes, 1))
        height *= rng.random((count, max_lobes, 1)) < 0.5  # on average max_lobes / 2 lobes
        width = rng.uniform(0.12, 0.3, (count, max_lobes, 1))
        d = np.remainder(_PHI - centre + np.pi, 2 * np.pi) - np.pi
        f += (height * np.exp(-0.5 * (d / width) ** 2)).sum(1)
    return np.maximum(f, 0.35).astype(np.float32)  # > 0 keeps the shape star-shaped


def is_free(label: np.ndarray, cy: float, cx: float, offsets: list[tuple[float, float]]) -> bool:
    """True if none of the probe points (cy + dy, cx + dx) inside the image is taken.

    A few look-ups reject most doomed proposals in dense images before any raster is made.
    """
    H, W = label.shape
    for dy, dx in offsets:
        y, x = int(cy + dy), int(cx + dx)
        if 0 <= y < H and 0 <= x < W and label[y, x]:
            return False
    return True


def star_shape(
    cy: float,
    cx: float,
    r: float,
    aspect: float,
    angle: float,
    lut: np.ndarray | None = None,
    core: float = 0.0,
) -> Shape:
    """Ellipse of mean radius `r` and axis ratio `aspect`, outline scaled by `lut` per angle.

    Star-shaped around its centre, so its raster is one region up to pixel effects
    (checked at placement). `core` > 0 adds `aux` = an ellipse of `core * r` at the centre.
    """
    a, b = r * np.sqrt(aspect), r / np.sqrt(aspect)
    fmax = float(lut.max()) if lut is not None else 1.0
    c, s = np.cos(angle), np.sin(angle)
    hx = fmax * np.hypot(a * c, b * s) + 1.0
    hy = fmax * np.hypot(a * s, b * c) + 1.0
    y0, x0, yy, xx = _grid(cy, cx, hy, hx)
    u = (xx * np.float32(c) + yy * np.float32(s)) / np.float32(a)
    v = (yy * np.float32(c) - xx * np.float32(s)) / np.float32(b)
    rho = np.sqrt(u * u + v * v)
    if lut is not None:
        idx = ((np.arctan2(v, u) + np.pi) * (_N_ANGLES / (2 * np.pi))).astype(np.int32)
        rho /= lut[idx % _N_ANGLES]
    mask = rho < 1
    depth = np.where(mask, 1 - rho, 0).astype(np.float32)
    aux = None
    if core > 0:
        aux = (np.sqrt(u * u + v * v) < core).astype(np.float32)
    simple = lut is None or (float(lut.min()) > 0.8 and fmax < 1.25)  # mild outline, r >= 2
    return Shape(y0, x0, mask, depth, aux, simple and r >= 2)


def rod_shape(
    cy: float, cx: float, length: float, width: float, angle: float, curvature: float = 0.0
) -> Shape:
    """Capsule (rod bacterium) of centre-line `length`, `width`, bent along a circular arc.

    `curvature` is 1/radius of the centre-line (0 = straight); depth = 1 - distance to the
    centre-line / half width.
    """
    half, hw = length / 2, width / 2
    c, s = np.cos(angle), np.sin(angle)
    bend = abs(curvature)
    sag = 0.0
    if bend > 1e-4:
        big_r = 1 / bend
        span = min(half / big_r, 0.95 * np.pi)  # half the arc's opening angle
        sag = big_r * (1 - np.cos(span))
    eu, ev = half + hw + 1.0, hw + sag + 1.0
    y0, x0, yy, xx = _grid(cy, cx, abs(s) * eu + abs(c) * ev, abs(c) * eu + abs(s) * ev)
    u = xx * np.float32(c) + yy * np.float32(s)
    v = yy * np.float32(c) - xx * np.float32(s)
    if bend <= 1e-4:
        d = np.sqrt(np.maximum(np.abs(u) - half, 0) ** 2 + v * v)
    else:
        v = v * np.float32(np.sign(curvature)) + np.float32(sag / 2)  # centre the bow on the crop
        dv = np.float32(big_r) - v
        on_arc = np.abs(np.arctan2(u, dv)) <= span
        d_arc = np.abs(np.sqrt(u * u + dv * dv) - np.float32(big_r))
        eu_, ev_ = big_r * np.sin(span), big_r * (1 - np.cos(span))
        d_end = np.sqrt((np.abs(u) - np.float32(eu_)) ** 2 + (v - np.float32(ev_)) ** 2)
        d = np.where(on_arc, d_arc, d_end)
    mask = d < hw
    depth = np.where(mask, 1 - d / np.float32(hw), 0).astype(np.float32)
    return Shape(y0, x0, mask, depth, simple=width >= 3)


def try_paint(
    label: np.ndarray,
    maps: dict[str, np.ndarray],
    shape: Shape,
    obj_id: int,
    max_overlap: float,
) -> bool:
    """Paint `shape` as object `obj_id` into `label` `[H, W]` where it is still free.

    Refused (nothing written) when more than `max_overlap` of its in-image area is already
    taken, when under 10% of it would show, or when the visible part is not one 4-connected
    region at least 2 px high and wide.
    `maps["depth"]` (and `maps["aux"]` if the shape has one) receive the visible pixels.
    """
    H, W = label.shape
    h, w = shape.mask.shape
    ys, xs = max(shape.y0, 0), max(shape.x0, 0)
    ye, xe = min(shape.y0 + h, H), min(shape.x0 + w, W)
    if ye - ys < 2 or xe - xs < 2:
        return False
    crop = (slice(ys - shape.y0, ye - shape.y0), slice(xs - shape.x0, xe - shape.x0))
    m = shape.mask[crop]
    lab = label[ys:ye, xs:xe]
    vis = m & (lab == 0)
    n_all, n_in, n_vis = int(shape.mask.sum()), int(m.sum()), int(vis.sum())
    if n_vis < max(4, 0.1 * n_all) or (n_in - n_vis) > max_overlap * n_in:
        return False  # (n_in: cells cut by the image border are fine, as in real tiles)
    if np.count_nonzero(vis.any(1)) < 2 or np.count_nonzero(vis.any(0)) < 2:
        return False
    whole = shape.simple and n_vis == n_all
    if not whole and ndimage.label(vis)[1] != 1:  # cut by a neighbour, the border, a waist
        return False
    lab[vis] = obj_id
    maps["depth"][ys:ye, xs:xe][vis] = shape.depth[crop][vis]
    if shape.aux is not None and "aux" in maps:
        maps["aux"][ys:ye, xs:xe][vis] = shape.aux[crop][vis]
    return True


Proposer = Callable[[np.random.Generator, float, float, float], "Shape | None"]
Sampler = Callable[[np.random.Generator, int], np.ndarray]


def uniform_sampler(size: int) -> Sampler:
    return lambda rng, k: rng.random((k, 2)) * size


def colony_sampler(
    rng: np.random.Generator, n: int, size: int, object_area: float, coverage: float
) -> Sampler:
    """Positions `[k, 2]` clustered in round colonies sized to hold their share of the n
    objects at `coverage`; 15% anywhere, so placement never starves when colonies fill."""
    n_col = max(1, int(round(n / rng.uniform(15, 80))))
    centres = rng.uniform(0.1, 0.9, (n_col, 2)) * size
    radius = np.sqrt(n / n_col * object_area / (coverage * np.pi))

    def sample(rng: np.random.Generator, k: int) -> np.ndarray:
        r = radius * np.sqrt(rng.random(k))
        t = rng.uniform(0, 2 * np.pi, k)
        p = centres[rng.integers(0, n_col, k)] + np.stack([r * np.sin(t), r * np.cos(t)], -1)
        anywhere = rng.random(k) < 0.15
        p[anywhere] = rng.random((int(anywhere.sum()), 2)) * size
        return np.clip(p, 0, size - 1e-3)

    return sample


def scatter(
    rng: np.random.Generator,
    label: np.ndarray,
    maps: dict[str, np.ndarray],
    n: int,
    propose: Proposer,
    max_overlap: float,
    sampler: Sampler | None = None,
    after: Callable[[np.random.Generator, Shape, int, int], int] | None = None,
) -> int:
    """Random sequential placement of `n` objects; returns how many were placed (ids 1..).

    Positions come from `sampler(rng, k)` `[k, 2]` (default uniform). `propose(rng, cy, cx,
    scale)` draws a shape centred near (cy, cx), or None when its probe points are taken
    (cheap rejection). After many consecutive failures all sizes shrink by 10% (`scale`),
    so a count that does not fit at natural size still fits; below scale 0.3 placement
    stops and fewer objects return. `after(rng, shape, next_id, room)` may paint extra
    objects (buds) and returns their count.
    """
    sampler = sampler or uniform_sampler(label.shape[0])
    placed, scale, fails = 0, 1.0, 0.0
    pos, k = np.empty((0, 2)), 0
    while placed < n:
        if k == len(pos):  # batch the random positions: one rng call per 256 tries
            pos, k = sampler(rng, 256), 0
        cy, cx = pos[k]
        k += 1
        shape = None if label[int(cy), int(cx)] else propose(rng, cy, cx, scale)
        if shape is None:
            fails += 0.1  # cheap rejection: counts less towards shrinking
        elif try_paint(label, maps, shape, placed + 1, max_overlap):
            placed += 1
            fails = 0.0
            if after is not None and placed < n:
                placed += after(rng, shape, placed + 1, n - placed)
            continue
        else:
            fails += 1.0
        if fails >= 60:
            scale, fails = scale * 0.9, 0.0
            if scale < 0.3:
                break
    return placed


def boundary_map(label: np.ndarray) -> np.ndarray:
    """Object pixels `[H, W]` (bool) with a 4-neighbour of a different id (or background)."""
    e = np.zeros(label.shape, bool)
    d = label[1:] != label[:-1]
    e[1:] |= d
    e[:-1] |= d
    d = label[:, 1:] != label[:, :-1]
    e[:, 1:] |= d
    e[:, :-1] |= d
    return e & (label > 0)
