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

    Pure broadcasting (no gathers): ~1 ms at 512 px.
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


# --------------------------------------------------------------------------------------
# Archetype scenes: label + ideal (noise-free, unblurred) signal; synthetic.py "acquires"
# them (optics blur, illumination, noise, contrast).
# --------------------------------------------------------------------------------------


@dataclass
class Scene:
    """Label `[S, S]` int32 (1..N), ideal whole-cell signal `[S, S]`, optional nuclear one.

    `modality` is "fluorescence" (dark background, bright objects, >= 0) or "transmitted"
    (grey background near 0.5: phase contrast / brightfield).
    """

    label: np.ndarray
    whole: np.ndarray
    nuclear: np.ndarray | None
    modality: str


def _density_radius(n: int, size: int, coverage: float) -> float:
    """Radius of n equal discs covering `coverage` of the image: caps sizes in dense images."""
    return float(np.sqrt(coverage * size * size / (max(n, 1) * np.pi)))


def _canvas(size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    z = np.zeros((size, size), np.float32)
    return np.zeros((size, size), np.int32), {"depth": z, "aux": z.copy()}


def _per_object(values: np.ndarray) -> np.ndarray:
    """Look-up table `[N + 1]` (entry 0 = background = 0) of per-object values `[N]`."""
    return np.concatenate([[0.0], values]).astype(np.float32)


def _halo(label: np.ndarray, sigma: float) -> np.ndarray:
    """Blurred object mask outside the objects `[S, S]`: the bright ring of phase/brightfield."""
    g = ndimage.gaussian_filter((label > 0).astype(np.float32), sigma)
    return np.where(label == 0, np.minimum(2 * g, 1), 0).astype(np.float32)


def _star_probes(
    r: float, aspect: float, angle: float, reach: float, diagonals: bool = False
) -> list[tuple[float, float]]:
    """Probe offsets (for `is_free`) at `reach` of an ellipse's semi-axes (and diagonals)."""
    a, b = reach * r * np.sqrt(aspect), reach * r / np.sqrt(aspect)
    c, s = np.cos(angle), np.sin(angle)
    probes = [(a * s, a * c), (-a * s, -a * c), (b * c, -b * s), (-b * c, b * s)]
    if diagonals:
        a, b = a * 0.7, b * 0.7
        probes += [(a * s + b * c, a * c - b * s), (a * s - b * c, a * c + b * s)]
        probes += [(-a * s + b * c, -a * c - b * s), (-a * s - b * c, -a * c + b * s)]
    return probes


def draw_nuclei(rng: np.random.Generator, n: int, size: int) -> Scene:
    """Fluorescent nuclei: round-oval textured blobs, some touching, on a dark background."""
    label, maps = _canvas(size)
    r0 = min(rng.uniform(6, 13), _density_radius(n, size, 0.42))
    bank = outline_bank(rng, 64, rng.uniform(0.02, 0.07), 3)

    def propose(rng: np.random.Generator, cy: float, cx: float, scale: float) -> Shape | None:
        z, u = rng.standard_normal(2), rng.random(2)  # two rng calls per proposal: cheap
        r = max(r0 * scale * np.exp(0.15 * z[0]), 2.2)
        aspect, angle = 1 + abs(0.25 * z[1]), np.pi * u[0]
        if not is_free(label, cy, cx, _star_probes(r, aspect, angle, 0.6)):
            return None
        return star_shape(cy, cx, r, aspect, angle, bank[int(u[1] * len(bank))])

    sampler = None
    if rng.random() < 0.3:  # some fields of view are clumped
        sampler = colony_sampler(rng, n, size, np.pi * r0 * r0, 0.45)
    k = scatter(rng, label, maps, n, propose, 0.1, sampler)
    bright = _per_object(np.clip(rng.lognormal(np.log(0.6), 0.35, k), 0.15, 1))
    fine = smooth_field(rng, size, size // 6)
    sig = bright[label] * (0.4 + 0.6 * np.sqrt(maps["depth"])) * (1 + 0.18 * fine)
    sig[boundary_map(label)] *= 0.75  # a dim line where touching nuclei meet
    return Scene(label, np.maximum(sig, 0), None, "fluorescence")


def _hex_seeds(rng: np.random.Generator, m: int, size: int, spacing: float) -> np.ndarray:
    """`m` jittered hexagonal-lattice points `[m, 2]` forming one compact, irregular patch."""
    while True:
        ang = rng.uniform(0, np.pi / 3)
        k = int(size / spacing * 1.6) + 2
        i, j = np.meshgrid(np.arange(-k, k + 1), np.arange(-k, k + 1), indexing="ij")
        pts = np.stack([i * np.sqrt(3) / 2, j + 0.5 * (i % 2)], -1).reshape(-1, 2) * spacing
        c, s = np.cos(ang), np.sin(ang)
        pts = np.stack([c * pts[:, 0] - s * pts[:, 1], s * pts[:, 0] + c * pts[:, 1]], -1)
        pts += size / 2 + rng.uniform(-spacing, spacing, 2)
        pts = pts + rng.uniform(-0.3, 0.3, pts.shape) * spacing
        pts = pts[((pts >= 1) & (pts <= size - 2)).all(1)]
        if len(pts) >= m:
            break
        spacing *= 0.97
    centre = rng.uniform(0.25, 0.75, 2) * size
    shape_noise = smooth_field(rng, size, 3)[pts[:, 0].astype(int), pts[:, 1].astype(int)]
    dist = np.linalg.norm(pts - centre, axis=1) * (1 + 0.3 * np.tanh(shape_noise))
    return pts[np.argsort(dist, kind="stable")[:m]]


def _single_regions(label: np.ndarray) -> np.ndarray:
    """Keep the largest 4-connected piece of every object, drop objects under 2 px in
    height or width, renumber 1..N in id order. `label` `[S, S]` -> int32 `[S, S]`."""
    from skimage.measure import label as equal_value_regions

    regions, nr = equal_value_regions(label, background=0, connectivity=1, return_num=True)
    flat_r = regions.ravel()
    region_id = np.zeros(nr + 1, np.int64)
    region_id[flat_r] = label.ravel()
    if nr > len(np.unique(region_id[1:])):  # some object is in pieces (rare)
        sizes = np.bincount(flat_r, minlength=nr + 1)
        order = np.lexsort((-sizes[1:], region_id[1:])) + 1  # by id, biggest piece first
        first = np.ones(len(order), bool)
        first[1:] = region_id[order[1:]] != region_id[order[:-1]]
        keep = np.zeros(nr + 1, bool)
        keep[order[first]] = True
        label = np.where(keep[regions], label, 0)
    lut = np.zeros(int(label.max()) + 1, np.int32)
    for i, sl in enumerate(ndimage.find_objects(label), start=1):
        if sl is not None and sl[0].stop - sl[0].start > 1 and sl[1].stop - sl[1].start > 1:
            lut[i] = 1
    lut[lut > 0] = np.arange(1, int(lut.sum()) + 1)
    return lut[label]


def draw_tissue(rng: np.random.Generator, n: int, size: int) -> Scene:
    """Tissue: packed polygonal cells (Voronoi cells of a jittered lattice, in warped
    coordinates for wavy borders), membrane-stained whole-cell signal, a textured nucleus
    per cell in the nuclear channel. All cells at once: the cost hardly depends on n."""
    label = np.zeros((size, size), np.int32)
    if n <= 0:
        empty = np.zeros((size, size), np.float32)
        return Scene(label, empty, empty.copy(), "fluorescence")
    n_holes = int(round(n * rng.uniform(0, 0.12))) if n >= 10 else 0  # extracellular gaps
    m = n + n_holes
    spacing = min(2 * rng.uniform(9, 16), np.sqrt(2 * size * size / (np.sqrt(3) * m)))
    seeds = _hex_seeds(rng, m, size, spacing)
    ids = np.zeros(m + 1, np.int32)  # 1 + seed index -> object id (0: a hole)
    ids[np.sort(rng.choice(m, n, replace=False)) + 1] = np.arange(1, n + 1)
    cap = _per_object(0.85 * spacing * np.exp(rng.uniform(-0.15, 0.15, m)))
    # nearest seed of every pixel (one EDT), looked up at warped coordinates
    iy, ix = np.rint(seeds).astype(np.int64).T
    seed_map = np.zeros((size, size), np.int32)
    seed_map[iy, ix] = np.arange(1, m + 1)
    near = ndimage.distance_transform_edt(
        seed_map == 0, return_distances=False, return_indices=True
    )
    near = near.astype(np.int32)
    amp, knots = 0.1 * spacing, max(2, int(size / spacing))
    wy, wx = amp * smooth_field(rng, size, knots), amp * smooth_field(rng, size, knots)
    grid = np.arange(size, dtype=np.float32) + 0.5  # + 0.5 then truncation = rounding
    qy = np.clip((grid[:, None] + wy).astype(np.int32), 0, size - 1)
    qx = np.clip((grid[None, :] + wx).astype(np.int32), 0, size - 1)
    q = qy * size + qx
    ny, nx = near[0].ravel()[q], near[1].ravel()[q]  # the seed pixel nearest to (qy, qx)
    owner = seed_map[ny, nx]
    d2 = (ny - qy) ** 2 + (nx - qx) ** 2
    raw = np.where(d2 < cap[owner] ** 2, ids[owner], 0).astype(np.int32)
    # nucleus: an ellipse around where the warp maps the seed, clipped to its own cell
    obj_seed = np.flatnonzero(ids[1:])  # seed index of objects 1..n
    sy, sx = iy[obj_seed], ix[obj_seed]
    cy, cx = _per_object(sy - wy[sy, sx]), _per_object(sx - wx[sy, sx])
    r = _per_object(spacing * rng.uniform(0.2, 0.3, n))
    asp = _per_object(rng.uniform(1, 1.5, n))
    ang = rng.uniform(0, np.pi, n)
    cos, sin = _per_object(np.cos(ang)), _per_object(np.sin(ang))
    fy, fx = np.nonzero(raw)
    o = raw[fy, fx]
    dy, dx = fy.astype(np.float32) - cy[o], fx.astype(np.float32) - cx[o]
    u = (dx * cos[o] + dy * sin[o]) / (r[o] * np.sqrt(asp[o]))
    v = (dy * cos[o] - dx * sin[o]) * np.sqrt(asp[o]) / r[o]
    rho = np.sqrt(u * u + v * v)
    nb = _per_object(np.clip(rng.lognormal(np.log(0.6), 0.3, n), 0.15, 1))
    nuclear = np.zeros((size, size), np.float32)
    inside = rho < 1
    nuclear[fy[inside], fx[inside]] = nb[o[inside]] * (0.4 + 0.6 * np.sqrt(1 - rho[inside]))
    label = _single_regions(raw)
    nuclear[label == 0] = 0  # slivers cut off by _single_regions lose their nucleus part too
    k = int(label.max())
    fine = smooth_field(rng, size, size // 6)
    nuclear *= 1 + 0.2 * fine
    # whole-cell marker: bright membrane, dim cytoplasm, some cells nearly negative
    mem = np.clip(rng.lognormal(np.log(0.8), 0.3, k), 0.1, 1)
    mem[rng.random(k) < 0.15] *= 0.3
    cyto = _per_object(mem * rng.uniform(0.08, 0.3, k))
    whole = cyto[label] * (1 + 0.3 * np.roll(fine, size // 2, axis=0))
    whole += _per_object(mem)[label] * boundary_map(label)
    whole[nuclear > 0] *= rng.uniform(0.4, 0.9)  # membrane/cytoplasm markers spare the nucleus
    return Scene(label, np.maximum(whole, 0), np.maximum(nuclear, 0), "fluorescence")


def draw_culture(rng: np.random.Generator, n: int, size: int) -> Scene:
    """Cultured cells in phase contrast: irregular spread shapes, dark body, lighter
    nucleus, thin lamellae near background level, bright halo around each cell."""
    label, maps = _canvas(size)
    r0 = min(rng.uniform(14, 30), _density_radius(n, size, 0.3))
    bank = outline_bank(rng, 64, rng.uniform(0.05, 0.12), 5, max_lobes=4)

    def propose(rng: np.random.Generator, cy: float, cx: float, scale: float) -> Shape | None:
        z, u = rng.standard_normal(), rng.random(4)
        r = max(r0 * scale * np.exp(0.2 * z), 2.5)
        aspect = 1 + min(-0.5 * np.log1p(-u[0]), 2.0)  # 1 + exponential(0.5), capped
        angle = np.pi * u[1]
        if not is_free(label, cy, cx, _star_probes(r, aspect, angle, 0.75, diagonals=True)):
            return None
        lut = bank[int(u[2] * len(bank))]
        return star_shape(cy, cx, r, aspect, angle, lut, 0.28 + 0.12 * u[3])

    sampler = None
    if rng.random() < 0.4:  # cells growing in patches
        sampler = colony_sampler(rng, n, size, np.pi * r0 * r0, 0.4)
    k = scatter(rng, label, maps, n, propose, 0.12, sampler)
    dark = _per_object(rng.uniform(0.12, 0.3, k))[label]
    fine = smooth_field(rng, size, size // 6)
    ramp = 1 - np.exp(-maps["depth"] / 0.12)  # flat lamella at the edge: little phase shift
    t = 0.5 - dark * (0.25 + 0.75 * ramp) * (1 + 0.25 * fine) + 0.45 * dark * maps["aux"]
    t += rng.uniform(0.2, 0.4) * _halo(label, rng.uniform(1.5, 3))
    return Scene(label, t.astype(np.float32), None, "transmitted")


def draw_bacteria(rng: np.random.Generator, n: int, size: int) -> Scene:
    """Rod bacteria in phase contrast: micro-colonies of aligned rods packed side by side
    and end to end (as after divisions), some curved; dark rods with a bright halo and
    light seams between touching cells."""
    label, maps = _canvas(size)
    w0 = rng.uniform(4.5, 7)
    l0 = w0 * rng.uniform(2.5, 4.5)
    fit = np.sqrt(0.5 * size * size / (max(n, 1) * (l0 * w0 + np.pi * w0 * w0 / 4)))
    if fit < 1:
        w0, l0 = max(w0 * fit, 3.0), max(l0 * fit, 3.0)
    orient = rng.uniform(0, np.pi) + rng.uniform(0.3, 1.5) * smooth_field(rng, size, 3)
    jitter = rng.uniform(0.08, 0.5)
    grow = rng.uniform(0.5, 0.95)  # chance that a new rod starts next to a placed one
    rods: list[tuple[float, float, float, float, float]] = []  # cy, cx, length, width, angle
    last: list[tuple[float, float, float, float, float]] = []

    def propose(rng: np.random.Generator, cy: float, cx: float, scale: float) -> Shape | None:
        z, u = rng.standard_normal(2), rng.random(10)  # two rng calls per proposal: cheap
        length = max(l0 * scale * (0.7 + 0.7 * u[0]), 2.0)
        width = max(w0 * min(1.0, scale * 1.4) * (0.9 + 0.2 * u[1]), 3.0)
        if rods and u[2] < grow:  # a neighbour: beside it or after its end
            py, px, pl, pw, pa = rods[int(u[3] * len(rods))]
            angle = pa + 0.12 * z[0]
            if u[4] < 0.65:
                along, across = (0.8 * u[5] - 0.4) * pl, (pw + width) / 2 + 0.6
            else:
                along, across = (pl + length) / 2 + width / 2 + 0.6, 0.1 * pw * z[1]
            along, across = along * (1 if u[6] < 0.5 else -1), across * (1 if u[7] < 0.5 else -1)
            cy = py + along * np.sin(pa) + across * np.cos(pa)
            cx = px + along * np.cos(pa) - across * np.sin(pa)
            if not (0 <= cy < size and 0 <= cx < size):
                return None
        else:
            angle = orient[int(cy), int(cx)] + jitter * z[0]
        du, dv = 0.4 * length * np.cos(angle), 0.4 * length * np.sin(angle)
        if not is_free(label, cy, cx, [(0, 0), (dv, du), (-dv, -du)]):
            return None
        last[:] = [(cy, cx, length, width, angle)]
        bend = (0.4 + 0.8 * u[9]) / length * (1 if u[6] < 0.5 else -1) if u[8] < 0.3 else 0
        return rod_shape(cy, cx, length, width, angle, bend)

    def record(rng: np.random.Generator, shape: Shape, next_id: int, room: int) -> int:
        rods.append(last[0])
        return 0

    k = scatter(rng, label, maps, n, propose, 0.06, after=record)
    dark = _per_object(rng.uniform(0.25, 0.4, k))[label]
    fine = smooth_field(rng, size, size // 6)
    t = 0.5 - dark * (0.55 + 0.45 * np.sqrt(maps["depth"])) * (1 + 0.08 * fine)
    seams = boundary_map(label) & ~ndimage.binary_dilation(label == 0)
    t[seams] += 0.35 * dark[seams]  # touching rods: a light seam, as the halo leaks in
    t += rng.uniform(0.15, 0.4) * _halo(label, rng.uniform(1.2, 2))
    return Scene(label, t.astype(np.float32), None, "transmitted")


def draw_yeast(rng: np.random.Generator, n: int, size: int) -> Scene:
    """Budding yeast in brightfield: round/oval cells with a dark rim, brighter centre,
    some with a vacuole; buds are separate objects touching their mother."""
    label, maps = _canvas(size)
    r0 = min(rng.uniform(8, 15), _density_radius(n, size, 0.4))
    bank = outline_bank(rng, 32, 0.02, 2)
    last = {}

    def propose(rng: np.random.Generator, cy: float, cx: float, scale: float) -> Shape | None:
        z, u = rng.standard_normal(2), rng.random(4)
        r = max(r0 * scale * np.exp(0.12 * z[0]), 2.5)
        aspect, angle = 1 + abs(0.12 * z[1]), np.pi * u[0]
        if not is_free(label, cy, cx, _star_probes(r, aspect, angle, 0.6)):
            return None
        last.update(cy=cy, cx=cx, r=r)
        vacuole = 0.3 + 0.2 * u[1] if u[2] < 0.5 else 0.0
        return star_shape(cy, cx, r, aspect, angle, bank[int(u[3] * len(bank))], vacuole)

    def bud(rng: np.random.Generator, mother: Shape, next_id: int, room: int) -> int:
        if rng.random() > 0.3:
            return 0
        rb = max(last["r"] * rng.uniform(0.35, 0.6), 2.5)  # no 2-pixel buds in dense fields
        phi = rng.uniform(-np.pi, np.pi)
        dist = last["r"] * 0.95 + rb * 0.6
        by, bx = last["cy"] + dist * np.sin(phi), last["cx"] + dist * np.cos(phi)
        shape = star_shape(by, bx, rb, 1 + abs(rng.normal(0, 0.1)), rng.uniform(0, np.pi))
        return int(try_paint(label, maps, shape, next_id, 0.5))

    sampler = None
    if rng.random() < 0.5:  # daughter cells stay together: clumps
        sampler = colony_sampler(rng, n, size, np.pi * r0 * r0, 0.4)
    scatter(rng, label, maps, n, propose, 0.03, sampler, after=bud)
    k = int(label.max())
    rim = _per_object(rng.uniform(0.22, 0.38, k))[label]
    cen = _per_object(rng.uniform(0.08, 0.2, k))[label]
    depth = maps["depth"]
    t = 0.5 + cen * depth**0.7 - rim * (1 - depth) ** 4 - 0.8 * cen * maps["aux"]
    t += rng.uniform(0.08, 0.2) * _halo(label, 1.5)
    return Scene(label, t.astype(np.float32), None, "transmitted")


DRAW = {
    "tissue": draw_tissue,
    "culture": draw_culture,
    "bacteria": draw_bacteria,
    "yeast": draw_yeast,
    "nuclei": draw_nuclei,
}
