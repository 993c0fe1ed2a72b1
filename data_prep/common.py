"""What converters share: the sample record, layout errors, readers and label helpers.

A converter only finds and reads its publisher's files and yields `SourceSample`s; the
pipeline (`data_prep.pipeline`) does channel placement, normalisation, tiling, filtering,
splits and writing for every dataset alike.
"""

from __future__ import annotations

import contextlib
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from skimage.measure import label as connected_label

from cellsam.data.io import (  # noqa: F401 (the converters import the readers from here)
    IMAGE_SUFFIXES,
    LABEL_SUFFIXES,
    TIFF_SUFFIXES,
    ImageReadError,
    read_image,
    read_label,
)
from cellsam.preprocess.channels import ChannelMap

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class DatasetLayoutError(ValueError):
    """The source folder does not look as the converter expects; says what and what was found."""


@dataclass(frozen=True)
class DatasetInfo:
    """Who publishes a dataset and how the converter names it (written to manifest.json)."""

    name: str  # output folder under --out and the `data=<name>` config
    source: str  # where to download it
    licence: str
    layout: str  # one-line description of the expected layout, used in errors


@dataclass
class SourceSample:
    """One source image as the publisher ships it, before any preparation.

    `image` is `[H, W]`, `[H, W, C]` or `[C, H, W]` in any numeric dtype; `label` is an
    integer instance label image `[H, W]` (0 = background), or None in the scanning pass
    (`with_labels=False`). `group` ties samples that must share a split (fields of view
    of one sample, frames of one time-lapse); `split` is the publisher's split or None.
    `channel_map` overrides the converter's map for this sample; `counts` carries
    converter-specific counts (e.g. overlap pixels) summed into the manifest.
    """

    name: str
    group: str
    split: str | None
    image: np.ndarray
    label: np.ndarray | None
    channel_map: ChannelMap | None = None
    counts: dict[str, int] = field(default_factory=dict)


def found_listing(folder: Path, limit: int = 12) -> list[str]:
    """A short listing of `folder` for error messages (sub-folders end with '/')."""
    if not folder.exists():
        return ["<does not exist>"]
    if folder.is_file():
        return [folder.name + " (a file)"]
    items = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return items[:limit] + ([f"... {len(items) - limit} more"] if len(items) > limit else [])


def layout_error(src: Path, expected: str, where: Path | None = None) -> DatasetLayoutError:
    """`DatasetLayoutError: <src>: expected <expected>, found: [...]`."""
    return DatasetLayoutError(f"{src}: expected {expected}, found: {found_listing(where or src)}")


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _safe_extract(archive: Path, dest: Path) -> None:
    dest_resolved = dest.resolve()
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (dest / member).resolve().is_relative_to(dest_resolved):
                    raise DatasetLayoutError(f"{archive}: unsafe path in archive: {member}")
            zf.extractall(dest)
        return
    with tarfile.open(archive) as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, filter="data")
            return
        for member in tf.getmembers():
            if not (dest / member.name).resolve().is_relative_to(dest_resolved) or member.issym():
                raise DatasetLayoutError(f"{archive}: unsafe member in archive: {member.name}")
        tf.extractall(dest)


@contextlib.contextmanager
def open_source(src: Path, work_dir: Path | None = None, nested: bool = False) -> Iterator[Path]:
    """Yield a folder (or file) to read `src` from.

    A folder or a non-archive file is used as it is. A zip or tar archive is extracted into
    a temporary folder (under `work_dir`), removed afterwards; with `nested`, archives found
    inside are extracted next to themselves too (BriFiSeg ships a tar of zips).
    """
    src = Path(src)
    if not src.exists():
        raise DatasetLayoutError(f"{src}: source does not exist")
    if not _is_archive(src):
        yield src
        return
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=work_dir))
    try:
        _safe_extract(src, tmp)
        if nested:
            for inner in sorted(p for p in tmp.rglob("*") if _is_archive(p)):
                _safe_extract(inner, inner.parent)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_instances(label: np.ndarray) -> np.ndarray:
    """Instance labels from `label` `[H, W]`: a binary mask becomes its connected components.

    Labels with values above 1 are returned unchanged (already instances).
    """
    if label.max(initial=0) <= 1:
        return connected_label(label > 0, connectivity=2).astype(np.int64)
    return label


def instances_to_label(
    instances: Iterable[tuple[int, int, np.ndarray]],
    shape: tuple[int, int],
    min_visible: float = 0.5,
) -> tuple[np.ndarray, dict[str, int]]:
    """Paint possibly overlapping object masks into one label image `[H, W]` (int32).

    `instances` yields `(y0, x0, mask)` with `mask` a boolean crop placed at (y0, x0).
    Overlap rule: larger objects are painted first, so a pixel claimed by several objects
    goes to the smallest of them; an object left with less than `min_visible` of its own
    area (e.g. a duplicate annotation of the same cell) is dropped. Objects are numbered in
    input order. Counts: `overlap_pixels` (pixels claimed 2+ times) and `overlap_dropped`.
    """
    items = [(y0, x0, np.asarray(m, bool)) for y0, x0, m in instances]
    claims = np.zeros(shape, np.int32)
    label = np.zeros(shape, np.int32)
    areas = np.array([int(m.sum()) for _, _, m in items], dtype=np.int64)
    for y0, x0, m in items:
        claims[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]] += m
    for k in sorted(range(len(items)), key=lambda i: (-areas[i], i)):
        y0, x0, m = items[k]
        region = label[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]]
        region[m] = k + 1
    visible = np.bincount(label.ravel(), minlength=len(items) + 1)[1:]
    drop = (visible < min_visible * areas) | (areas == 0)
    dropped = int(drop[areas > 0].sum())
    if drop.any():
        lut = np.arange(len(items) + 1, dtype=np.int32)
        lut[1:][drop] = 0
        label = lut[label]
    counts = {"overlap_pixels": int((claims > 1).sum()), "overlap_dropped": dropped}
    return label, counts


def crop_mask(mask: np.ndarray) -> tuple[int, int, np.ndarray] | None:
    """`(y0, x0, crop)` of a full-size boolean mask `[H, W]` cut to its bounding box."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
    return int(y0), int(x0), mask[y0:y1, x0:x1]


def sorted_files(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Files directly in `folder` with one of `suffixes` (case-insensitive), sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def stack_frames(image: np.ndarray, label: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split a time-lapse or z-stack `[T, H, W]` pair into frames; a 2-D label gives one pair."""
    if label.ndim == 2:
        return [(image, label)]
    same_frames = image.ndim in (3, 4) and image.shape[0] == label.shape[0]
    if label.ndim == 3 and same_frames and image.shape[1:3] == label.shape[1:]:
        return [(image[t], label[t]) for t in range(label.shape[0])]
    raise DatasetLayoutError(f"label stack {label.shape} does not match image {image.shape}")




def match_pairs(
    images_dir: Path,
    labels_dir: Path,
    *,
    image_suffix: str = "",
    label_suffix: str = "",
    exclude: tuple[str, ...] = (),
    label_stem: Callable[[str], str] | None = None,
) -> list[tuple[str, Path, Path]]:
    """Pair every image in `images_dir` with its label in `labels_dir`, matched by name.

    An image `<key><image_suffix>.<ext>` (stems ending in one of `exclude` are skipped)
    pairs with `<key><label_suffix>.<ext>` (any image extension or `.npy`), or with
    `label_stem(key)` when given. Returns `(key, image, label)` sorted by key; raises
    `DatasetLayoutError` naming the images that have no label.
    """
    labels = {}
    for p in sorted_files(labels_dir, LABEL_SUFFIXES):
        labels.setdefault(p.stem, p)
    out, missing = [], []
    for img in sorted_files(images_dir):
        stem = img.stem
        if not stem.endswith(image_suffix) or any(stem.endswith(e) for e in exclude if e):
            continue
        if images_dir == labels_dir and label_suffix and stem.endswith(label_suffix):
            continue
        key = stem[: len(stem) - len(image_suffix)] if image_suffix else stem
        want = label_stem(key) if label_stem else key + label_suffix
        if want in labels:
            out.append((key, img, labels[want]))
        else:
            missing.append(img.name)
    if missing:
        raise DatasetLayoutError(
            f"{images_dir}: {len(missing)} image(s) without a label named like "
            f"'{(label_stem('<name>') if label_stem else '<name>' + label_suffix)}.<ext>' "
            f"in {labels_dir}: {missing[:5]}; labels found: {found_listing(labels_dir, 5)}"
        )
    return sorted(out, key=lambda t: t[0])
