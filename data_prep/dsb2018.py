"""DSB 2018: the 2018 Data Science Bowl nuclei (Kaggle layout, one PNG per nucleus).

Source: https://www.kaggle.com/c/data-science-bowl-2018/data (`stage1_train.zip`).
Licence: CC0 1.0 (the stage-1 set as published in BBBC038); cite Caicedo et al., Nature
Methods 2019.

Expected layout (a folder, or the zip itself)::

    <src>/stage1_train/<id>/images/<id>.png      RGBA (alpha dropped)
    <src>/stage1_train/<id>/masks/<mask>.png     one binary PNG per nucleus
  or the zip's own layout, without the `stage1_train/` level.

Images are averaged to grey (the nuclear stain; grey images stay as they are) and, being
nuclear-only, go to the whole-cell (blue) slot. Per-nucleus masks are painted into one
label image with `instances_to_label` (an overlapping pixel goes to the smaller nucleus;
a mask left under half visible is dropped; counts in the manifest). No publisher split
with labels: 80/10/10 by image, seeded.

    python -m data_prep.dsb2018 --src stage1_train.zip --out data     # then data=dsb2018
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import imageio.v3 as iio

from data_prep.cli import run_converter
from data_prep.common import (
    DatasetInfo,
    SourceSample,
    crop_mask,
    instances_to_label,
    layout_error,
    read_image,
    sorted_files,
)

INFO = DatasetInfo(
    name="dsb2018",
    source="https://www.kaggle.com/c/data-science-bowl-2018/data (stage1_train.zip)",
    licence="CC0 1.0",
    layout="stage1_train/<id>/images/<id>.png and stage1_train/<id>/masks/*.png",
)


def find_samples_root(root: Path) -> Path:
    """The folder whose sub-folders are the `<id>/images`, `<id>/masks` samples."""
    for candidate in (root / "stage1_train", root):
        if candidate.is_dir() and any((d / "images").is_dir() for d in candidate.iterdir()
                                      if d.is_dir()):
            return candidate
    raise layout_error(root, "stage1_train/<id>/ folders with images/ and masks/ inside")


def read_masks(mask_dir: Path, shape: tuple[int, int]) -> tuple:
    """Label image `[H, W]` and overlap counts from the per-nucleus PNGs of one sample."""
    crops = []
    for p in sorted_files(mask_dir, (".png",)):
        m = iio.imread(p)
        m = (m[..., 0] if m.ndim == 3 else m) > 0
        if m.shape != shape:
            raise layout_error(mask_dir, f"masks of shape {shape}, got {m.shape} in {p.name}")
        c = crop_mask(m)
        if c is not None:
            crops.append(c)
    return instances_to_label(crops, shape)


def iter_samples(root: Path, args: argparse.Namespace, with_labels: bool) -> Iterator[SourceSample]:
    base = find_samples_root(root)
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        images = sorted_files(d / "images", (".png",))
        if len(images) != 1 or not (d / "masks").is_dir():
            raise layout_error(d, "images/<id>.png (one file) and masks/*.png")
        image = read_image(images[0])
        label, counts = None, {}
        if with_labels:
            label, counts = read_masks(d / "masks", image.shape[:2])
        yield SourceSample(d.name, d.name, None, image, label, counts=counts)


def main(argv: list[str] | None = None) -> int:
    return run_converter(INFO, iter_samples, argv, converter="data_prep.dsb2018", doc=__doc__,
                         channel_map={"nuclear": "all"})


if __name__ == "__main__":
    raise SystemExit(main())
