"""The one preparation pipeline every converter runs (paper, Appendix A).

Per source sample: channel placement -> optional rescale (LIVECell x2: bicubic image,
nearest labels) -> percentile clip + rescale to [0, 1] -> optional CLAHE -> zero padding to
512 / 512x512 tiles with 25% overlap -> per tile: drop disjoint and 1-px-thin labels,
renumber 1..N, drop tiles without labels. Then splits (`data_prep.splits`) and writing
through `cellsam.data.format` (`SplitWriter`, `write_manifest`), with the counts of
everything removed in `manifest.json`.

Two passes over the converter's samples: a light scan (images only: names, groups,
publisher splits, content hashes, which fix every split before anything is written), then
the preparation, spread over `workers` processes. Results are consumed in source order,
so the output bytes do not depend on the number of workers.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from skimage.transform import resize
from tqdm import tqdm

from cellsam.data.format import SPLITS, TILE_SIZE, SplitWriter, image_hash, write_manifest
from cellsam.preprocess.channels import ChannelMap, place_channels
from cellsam.preprocess.normalize import normalize_channels
from cellsam.preprocess.tiling import OVERLAP, training_tiles
from data_prep.common import DatasetInfo, DatasetLayoutError, SourceSample
from data_prep.splits import assign_splits

PIPELINE_VERSION = "1"
COUNT_KEYS = ("source_images", "tiles_total", "tiles_written", "tiles_without_labels",
              "tiles_blank_image", "disjoint_labels", "thin_labels")
SampleSource = Callable[[bool], Iterable[SourceSample]]  # with_labels -> samples, same order


@dataclass(frozen=True)
class PrepSettings:
    """Settings of the common steps; all of them are written to the manifest."""

    channel_map: ChannelMap | None = None  # converter default; a sample may override it
    percentile: float = 99.9
    clahe: bool = True
    clahe_kernel: int = 128
    overlap: float = OVERLAP
    scale: float = 1.0  # resize factor before normalisation (LIVECell: 2)
    seed: int = 0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    val_fraction: float = 0.1  # share of train groups moved to val when a publisher has none

    def manifest_dict(self) -> dict:
        d = asdict(self)
        d["channel_map"] = None if self.channel_map is None else dict(self.channel_map)
        d["fractions"] = list(self.fractions)
        d["tile"] = TILE_SIZE
        return d


TileItem = tuple[str, np.ndarray, np.ndarray]  # name suffix, image [3, T, T], label [T, T]


def rescale_pair(
    image: np.ndarray, label: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Resize `image` `[C, H, W]` (bicubic) and `label` `[H, W]` (nearest) by `scale`."""
    h, w = label.shape
    size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    img = np.stack(
        [resize(ch, size, order=3, mode="reflect", anti_aliasing=False, preserve_range=True)
         for ch in image]
    ).astype(np.float32)
    lab = resize(label, size, order=0, mode="edge", anti_aliasing=False, preserve_range=True)
    return img, np.rint(lab).astype(label.dtype)


def prepare_tiles(
    image: np.ndarray, label: np.ndarray, channel_map: ChannelMap | None, settings: PrepSettings
) -> tuple[list[TileItem], Counter]:
    """All common steps for one source image; returns the kept tiles and the counts.

    A tile's name suffix is "" for an image that fits in one tile, else `_y<y0>_x<x0>`.
    """
    placed = place_channels(image, channel_map)
    label = np.asarray(label)
    if label.shape != placed.shape[1:]:
        raise ValueError(f"label shape {label.shape} != image shape {placed.shape[1:]}")
    if settings.scale != 1.0:
        placed, label = rescale_pair(placed, label, settings.scale)
    norm = normalize_channels(placed, settings.percentile, settings.clahe, settings.clahe_kernel)
    return training_tiles(norm, label, TILE_SIZE, settings.overlap)


def _job(args: tuple) -> tuple[list[TileItem], Counter]:
    return prepare_tiles(*args)


def _ordered_results(
    samples: Iterable[SourceSample], settings: PrepSettings, workers: int
) -> Iterator[tuple[SourceSample, tuple[list[TileItem], Counter]]]:
    """`prepare_tiles` of every sample, in input order; at most 2 x workers in flight."""
    def job_args(s: SourceSample) -> tuple:
        if s.label is None:
            raise ValueError(f"{s.name}: converter yielded no label in the writing pass")
        return s.image, s.label, s.channel_map or settings.channel_map, settings

    if workers <= 1:
        for s in samples:
            yield s, _job(job_args(s))
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending: deque = deque()
        for s in samples:
            pending.append((s, pool.submit(_job, job_args(s))))
            # drop the image from the record kept here; the worker has its own copy
            s.image = s.label = None  # type: ignore[assignment]
            if len(pending) >= 2 * workers:
                done, fut = pending.popleft()
                yield done, fut.result()
        while pending:
            done, fut = pending.popleft()
            yield done, fut.result()


def _prepare_out_dir(final: Path) -> None:
    if final.exists():
        if (final / "manifest.json").is_file() or (final.is_dir() and not any(final.iterdir())):
            return
        raise DatasetLayoutError(
            f"{final}: exists and is not a converted dataset (no manifest.json); "
            "refusing to overwrite it"
        )


def convert(
    info: DatasetInfo,
    samples: SampleSource,
    out_root: Path,
    settings: PrepSettings,
    *,
    converter: str,
    workers: int = 1,
    extra_settings: dict | None = None,
    progress: bool = True,
) -> dict:
    """Prepare every sample of `samples` and write `<out_root>/<info.name>/`; returns the manifest.

    `samples(with_labels)` must yield the same samples in the same order each time it is
    called. The dataset is written to a hidden sibling folder first and moved into place at
    the end, replacing an earlier conversion.
    """
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    final = out_root / info.name
    _prepare_out_dir(final)
    start = time.perf_counter()
    records = []
    for s in tqdm(samples(False), desc=f"{info.name}: scan", unit="img", disable=not progress):
        records.append((s.name, s.group, s.split, image_hash(s.image)))
    if not records:
        raise DatasetLayoutError(f"{info.name}: found no samples; expected {info.layout}")
    names = [r[0] for r in records]
    if len(set(names)) != len(names):
        dup = sorted(n for n, c in Counter(names).items() if c > 1)[:5]
        raise DatasetLayoutError(f"{info.name}: sample names are not unique: {dup}")
    plan = assign_splits(
        [r[1] for r in records], [r[2] for r in records], [r[3] for r in records],
        seed=settings.seed, fractions=settings.fractions, val_fraction=settings.val_fraction,
    )
    tmp = out_root / f".{info.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    totals: Counter = Counter(dict.fromkeys(COUNT_KEYS, 0))
    by_split: dict[str, Counter] = {}
    writers: dict[str, SplitWriter] = {}
    done = 0
    try:
        with contextlib.ExitStack() as stack:
            results = _ordered_results(samples(True), settings, workers)
            bar = tqdm(results, total=len(records), desc=f"{info.name}: prepare", unit="img",
                       disable=not progress)
            for i, (sample, (tiles, counts)) in enumerate(bar):
                if i >= len(names) or sample.name != names[i]:
                    raise RuntimeError(f"{info.name}: samples changed between passes at {i}")
                split = plan.splits[i]
                if tiles and split not in writers:
                    writers[split] = stack.enter_context(SplitWriter(tmp, split))
                for suffix, img, lab in tiles:
                    writers[split].add(img, lab, sample.name + suffix, source=sample.group)
                counts.update(sample.counts)
                counts["source_images"] += 1
                by_split.setdefault(split, Counter(dict.fromkeys(COUNT_KEYS, 0))).update(counts)
                totals.update(counts)
                done += 1
            if done != len(names):
                raise RuntimeError(f"{info.name}: {len(names)} samples scanned, {done} prepared")
        split_infos = {s: writers[s].summary for s in SPLITS if s in writers}
        if not split_infos:
            raise DatasetLayoutError(f"{info.name}: every tile was dropped (no labels?)")
        filtering = {**dict(totals), **plan.counts,
                     "by_split": {s: dict(by_split[s]) for s in SPLITS if s in by_split}}
        manifest = write_manifest(
            tmp, name=info.name, source=info.source, licence=info.licence,
            converter=converter, converter_version=PIPELINE_VERSION, splits=split_infos,
            filtering=filtering, settings={**settings.manifest_dict(), **(extra_settings or {})},
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    seconds = time.perf_counter() - start
    if progress:
        parts = ", ".join(f"{s} {v['n_images']}" for s, v in split_infos.items())
        print(f"{info.name}: {len(records)} images -> {totals['tiles_written']} tiles ({parts}) "
              f"in {seconds:.1f} s ({len(records) / seconds:.2f} images/s) -> {final}",
              file=sys.stderr)
    return manifest
