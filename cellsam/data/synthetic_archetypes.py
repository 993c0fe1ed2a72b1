"""Archetype scenes for the synthetic cell generator: one renderer per archetype.

Each `draw_*(rng, n, size)` places objects with the helpers of `synthetic_shapes` (tissue:
one warped Voronoi tessellation instead) and returns a `Scene`: the exact label plus the
ideal (noise-free, unblurred) signal. `synthetic.py` then "acquires" it (optics blur,
illumination, noise, contrast). `DRAW` maps archetype names to renderers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cellsam.data.synthetic_shapes import (
    Shape,
    boundary_map,
    colony_sampler,
    is_free,
    outline_bank,
    rod_shape,
    scatter,
    smooth_field,
    star_shape,
    try_paint,
)


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
