"""Synthetic microscopy images with exact instance labels: the project's built-in dataset.

Five archetypes mirror the paper's evaluation groups (REFERENCE.md section 4 channel layout,
(R, G, B) = (blank, nuclear, whole-cell)):

- ``tissue``   packed polygonal cells; nuclei in channel 1, membrane/cytoplasm in channel 2
- ``culture``  spread irregular cells, phase contrast (dark body, bright halo), channel 2
- ``bacteria`` dense aligned rods, some curved, phase contrast, channel 2
- ``yeast``    round/oval budding cells, brightfield (dark rim, brighter centre), channel 2
- ``nuclei``   fluorescent textured blobs, some touching, channel 2 (blue is never empty)

A scene is drawn object by object in bounding-box crops (`synthetic_shapes`, renderers in
`synthetic_archetypes`; tissue as one warped Voronoi tessellation), so the label is the
exact raster of what is rendered, then "acquired": optics blur, uneven illumination,
shot/read noise, random contrast and tone curve. Everything comes from one
`numpy.random.default_rng(seed)`: a seed gives identical bytes on every call and in every
worker process (float rounding of numpy's vectorised math may differ between CPU families,
so bytes across machines are not promised).

Object counts: `generate_sample` returns exactly `n_cells` objects whenever they fit. Sizes
shrink with density (1000 cells fit in 512x512 for every archetype; tested up to that); if
placement still fails after shrinking sizes to 30% it stops and returns fewer objects
(e.g. several thousand cells in 512x512, or far more than fit in a small `size`).
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing as mp
import os
import shutil
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from cellsam.data.format import MANIFEST_FILE, TILE_SIZE, SplitWriter, write_manifest
from cellsam.data.synthetic_archetypes import DRAW, Scene
from cellsam.data.synthetic_shapes import smooth_low, upsample_linear

ARCHETYPES: tuple[str, ...] = ("tissue", "culture", "bacteria", "yeast", "nuclei")
GENERATOR_VERSION = "1.0"  # bump when output bytes change: ensure_synthetic then regenerates
DATASET_NAME = "synthetic"
CONVERTER = "data_prep.synthetic"


def _illumination(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """Smooth multiplicative field `[S, S]` around 1: vignetting-like blotches plus a slow
    gradient, made on a coarse grid and upsampled once."""
    low, factor = smooth_low(rng, size, 2)
    ramp = np.linspace(-1, 1, low.shape[0], dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    low = 0.7 * low + 0.5 * (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None])
    low = np.maximum(1 + np.float32(strength) * low, 0.3)
    return upsample_linear(low, factor, size)


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-std noise `shape` float32: sum of two uniforms (triangular),
    cheaper than normal variates and indistinguishable at camera noise levels."""
    z = rng.random(shape, dtype=np.float32)
    z += rng.random(shape, dtype=np.float32)
    z -= 1
    z *= np.float32(np.sqrt(6))
    return z


def _contrast_curve(s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random monotone tone curve of [0, 1] onto itself (gamma-like): x + k x (1 - x)."""
    k = np.float32(rng.uniform(-0.35, 0.35))
    s += k * s * (1 - s)
    return s


def _fluorescence(signal: np.ndarray, illum: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ideal emission `[S, S]` (>= 0) -> camera image `[S, S]` float32 in [0, 1]."""
    s = ndimage.gaussian_filter(signal, rng.uniform(0.7, 1.5))
    s += np.float32(rng.uniform(0.01, 0.06))  # autofluorescence / offset: not black
    s *= illum
    photons = rng.uniform(40, 400)  # photons at signal 1: sets the shot noise
    read = rng.uniform(0.004, 0.02)
    var = s * np.float32(1 / photons)
    var += np.float32(read * read)
    s += np.sqrt(var) * _noise(rng, s.shape)
    hi = float(np.percentile(s[::4, ::4], 99.9))  # data prep clips at the 99.9th percentile
    s *= np.float32(rng.uniform(0.75, 1.0) / max(hi, 1e-6))
    np.clip(s, 0, 1, out=s)
    return _contrast_curve(s, rng)


def _transmitted(signal: np.ndarray, illum: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ideal phase/brightfield intensity `[S, S]` (grey ~0.5) -> camera image in [0, 1]."""
    s = ndimage.gaussian_filter(signal, rng.uniform(0.6, 1.3))
    s *= illum
    s += np.float32(rng.uniform(0.008, 0.03)) * _noise(rng, s.shape)
    lo, hi = np.percentile(s[::4, ::4], [0.1, 99.9])
    out_lo, out_hi = rng.uniform(0.0, 0.12), rng.uniform(0.8, 1.0)  # varying contrast
    s -= np.float32(lo)
    s *= np.float32((out_hi - out_lo) / max(hi - lo, 1e-6))
    s += np.float32(out_lo)
    np.clip(s, 0, 1, out=s)
    return _contrast_curve(s, rng)


def generate_sample(
    archetype: str, n_cells: int, seed: int, size: int = TILE_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its label.

    Returns the image `[3, size, size]` float32 in [0, 1] (channel 0 blank, 1 nuclear (tissue
    only), 2 whole-cell / single-channel image, never empty) and the label `[size, size]`
    int32, objects 1..N, each one 4-connected region at least 2 px high and wide; N ==
    `n_cells` unless they cannot fit (see the module docstring).
    """
    if archetype not in DRAW:
        raise ValueError(f"unknown archetype {archetype!r}; choose from {ARCHETYPES}")
    if n_cells < 0 or size < 32:
        raise ValueError(f"need n_cells >= 0 and size >= 32, got {n_cells}, {size}")
    rng = np.random.default_rng(seed)
    scene: Scene = DRAW[archetype](rng, int(n_cells), int(size))
    fluo = scene.modality == "fluorescence"
    acquire = _fluorescence if fluo else _transmitted
    # one illumination field per image: both channels went through the same optics
    illum = _illumination(rng, size, rng.uniform(0.1, 0.35) if fluo else rng.uniform(0.05, 0.2))
    image = np.zeros((3, size, size), np.float32)
    image[2] = acquire(scene.whole, illum, rng)
    if scene.nuclear is not None:
        image[1] = acquire(scene.nuclear, illum, rng)
    if image[2].max() <= 0:  # practically unreachable (offset + noise), but the format demands it
        image[2, 0, 0] = 1e-3
    return image, scene.label.astype(np.int32, copy=False)


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------


def _image_seeds(seed: int, split: str, index: int) -> tuple[int, int]:
    """(image seed, cell-count seed) for image `index` of `split`: independent of workers."""
    ss = np.random.SeedSequence([int(seed), zlib.crc32(split.encode()), int(index)])
    a, b = ss.generate_state(2, dtype=np.uint32)
    return int(a), int(b)


def _jobs(
    n_images: dict[str, int],
    cells: tuple[int, int],
    archetypes: Sequence[str],
    seed: int,
    cell_scale: int,
) -> Iterator[tuple[str, int, str, int, int, int]]:
    """(split, index, archetype, n_cells, image seed, scale) per image, in writing order."""
    for split, count in n_images.items():
        for i in range(int(count)):
            image_seed, count_seed = _image_seeds(seed, split, i)
            n = int(np.random.default_rng(count_seed).integers(cells[0], cells[1] + 1))
            yield split, i, archetypes[i % len(archetypes)], n, image_seed, cell_scale


def render_scaled(
    archetype: str, n_cells: int, seed: int, cell_scale: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """A 512 px tile whose cells are `cell_scale` times their usual size.

    The scene is rendered at `512 / cell_scale` px and enlarged (bilinear image, nearest
    label), which is what a `cell_scale`-times higher magnification looks like. Models that
    run below 512 px (the tiny CPU config) then see cells at a size their patches resolve.
    """
    if cell_scale < 1 or TILE_SIZE % cell_scale:
        raise ValueError(f"cell_scale must divide {TILE_SIZE}, got {cell_scale}")
    image, label = generate_sample(archetype, n_cells, seed, size=TILE_SIZE // cell_scale)
    if cell_scale == 1:
        return image, label
    image = ndimage.zoom(image, (1, cell_scale, cell_scale), order=1, grid_mode=True,
                         mode="nearest").clip(0.0, 1.0).astype(np.float32)
    label = label.repeat(cell_scale, axis=0).repeat(cell_scale, axis=1)
    return image, label


def _render_job(job: tuple[str, int, str, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    # module level so that spawn-started workers can unpickle it
    _, _, archetype, n, image_seed, cell_scale = job
    return render_scaled(archetype, n, image_seed, cell_scale)


def _settings(
    n_images: dict[str, int],
    cells: Sequence[int],
    archetypes: Sequence[str],
    seed: int,
    cell_scale: int = 1,
) -> dict:
    """Everything that determines the output bytes, JSON-normalised (tuples -> lists)."""
    return json.loads(
        json.dumps(
            {
                "n_images": {str(k): int(v) for k, v in n_images.items()},
                "cells": [int(cells[0]), int(cells[1])],
                "archetypes": list(archetypes),
                "seed": int(seed),
                "size": TILE_SIZE,
                "generator_version": GENERATOR_VERSION,
                # only recorded when used, so existing datasets stay current
                **({"cell_scale": int(cell_scale)} if cell_scale != 1 else {}),
            }
        )
    )


def generate_dataset(
    out_dir: str | Path,
    n_images: dict[str, int],
    cells: tuple[int, int] = (8, 48),
    archetypes: Sequence[str] = ARCHETYPES,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    cell_scale: int = 1,
) -> dict:
    """Write a synthetic dataset in the project format into `out_dir`; returns the manifest.

    `n_images` maps split -> count (e.g. {"train": 96, "val": 16, "test": 16}). Image i of a
    split uses archetype `archetypes[i % len(archetypes)]`, a cell count uniform in
    `[cells[0], cells[1]]` and a seed derived from (seed, split, i), so the bytes do not
    depend on `workers` (> 1: a spawn-started process pool renders, this process writes).
    `cell_scale` > 1 enlarges the cells (see `render_scaled`).
    """
    from tqdm import tqdm

    archetypes = tuple(archetypes)
    bad = [a for a in archetypes if a not in DRAW]
    if bad or not archetypes:
        raise ValueError(f"unknown or no archetypes {bad}; choose from {ARCHETYPES}")
    if not 0 <= cells[0] <= cells[1]:
        raise ValueError(f"cells must be (lo, hi) with 0 <= lo <= hi, got {cells}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = list(_jobs(n_images, cells, archetypes, seed, int(cell_scale)))
    pool = None
    if workers > 1 and len(jobs) > 1:
        pool = mp.get_context("spawn").Pool(min(workers, len(jobs)))
        results = pool.imap(_render_job, jobs, chunksize=2)
    else:
        results = map(_render_job, jobs)
    infos: dict[str, dict] = {}
    try:
        with tqdm(total=len(jobs), desc="synthetic", disable=not progress, unit="img") as bar:
            it = iter(zip(jobs, results))
            for split, count in n_images.items():
                with SplitWriter(out_dir, split) as writer:
                    for _ in range(int(count)):
                        (_, i, archetype, *_), (image, label) = next(it)
                        name = f"{split}_{i:05d}_{archetype}"
                        writer.add(image, label, name, source=f"synthetic/{archetype}")
                        bar.update(1)
                infos[split] = writer.summary
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return write_manifest(
        out_dir,
        name=DATASET_NAME,
        source="cellsam synthetic generator",
        licence="Apache-2.0",
        converter=CONVERTER,
        converter_version=GENERATOR_VERSION,
        splits=infos,
        settings=_settings(n_images, cells, archetypes, seed, cell_scale),
    )


def _is_current(out_dir: Path, settings: dict) -> bool:
    try:
        manifest = json.loads((out_dir / MANIFEST_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return manifest.get("settings") == settings


def ensure_synthetic(
    out_dir: str | Path,
    n_images: dict[str, int],
    cells: tuple[int, int] = (8, 48),
    archetypes: Sequence[str] = ARCHETYPES,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    cell_scale: int = 1,
) -> Path:
    """Make sure `out_dir` holds the synthetic dataset for these parameters; returns it.

    Regenerates when the folder is missing or its manifest "settings" differ. The new data
    are written to a hidden sibling folder and renamed into place, so an interrupted run
    never leaves a half dataset; an exclusive `flock` on a sibling lock file makes
    concurrent callers (e.g. DDP ranks) wait and then find the finished dataset.
    """
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    settings = _settings(n_images, cells, archetypes, seed, cell_scale)
    if _is_current(out_dir, settings):  # fast path: no lock needed to read a finished dataset
        return out_dir
    with open(out_dir.parent / f".{out_dir.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _is_current(out_dir, settings):  # another process made it while we waited
                return out_dir
            tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                generate_dataset(
                    tmp, n_images, cells, archetypes, seed, workers, progress, cell_scale
                )
                if out_dir.exists():  # move the stale copy aside first: rename needs a free name
                    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
                    os.replace(out_dir, old)
                    shutil.rmtree(old, ignore_errors=True)
                os.replace(tmp, out_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return out_dir
