"""Cellpose: the Cellpose "cyto" dataset (Stringer et al., Nature Methods 2021).

Source: https://www.cellpose.org/dataset (`train.zip`, `test.zip`; accept the terms).
Licence: the Cellpose dataset terms (non-commercial research use).

Expected layout (a folder holding both, or each zip extracted into it)::

    <src>/train/<nnn>_img.png    RGB: red (index 0) nuclei, green (index 1) cytoplasm
    <src>/train/<nnn>_masks.png  16-bit instance labels
    <src>/test/<nnn>_img.png     <src>/test/<nnn>_masks.png

In Cellpose's own 1-based channel numbering this is `--chan 2 --chan2 1` (cytoplasm green,
nuclei red), i.e. array channel 1 -> whole-cell and channel 0 -> nuclear here; a grey
(2-D) image goes to the whole-cell slot. `--channels` overrides the map. The publisher's
train/test split is kept; val is 10% of the train images (seeded).

    python -m data_prep.cellpose --src cellpose_dataset --out data     # then data=cellpose
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from data_prep.cli import run_converter
from data_prep.common import (
    DatasetInfo,
    SourceSample,
    layout_error,
    match_pairs,
    read_image,
    read_label,
)

INFO = DatasetInfo(
    name="cellpose",
    source="https://www.cellpose.org/dataset (train.zip, test.zip)",
    licence="Cellpose dataset terms (non-commercial research use)",
    layout="train/ and test/ folders with *_img.png and *_masks.png",
)
CHANNEL_MAP = {"nuclear": 0, "whole_cell": 1}


def find_split_dirs(root: Path) -> list[tuple[str, Path]]:
    """`(split, folder)` for train/ and test/ under `root` (searched one level down too)."""
    for base in [root, *sorted(p for p in root.iterdir() if p.is_dir())] if root.is_dir() else []:
        found = [(s, base / s) for s in ("train", "test")
                 if (base / s).is_dir() and any((base / s).glob("*_img.png"))]
        if found:
            return found
    raise layout_error(root, "train/ and test/ folders with *_img.png and *_masks.png")


def iter_samples(root: Path, args: argparse.Namespace, with_labels: bool) -> Iterator[SourceSample]:
    for split, folder in find_split_dirs(root):
        for key, img_path, lab_path in match_pairs(folder, folder, image_suffix="_img",
                                                   label_suffix="_masks"):
            image = read_image(img_path)
            cmap = {"whole_cell": 0} if image.ndim == 2 and not args.channels else None
            name = f"{split}/{key}"
            label = read_label(lab_path) if with_labels else None
            yield SourceSample(name, name, split, image, label, channel_map=cmap)


def main(argv: list[str] | None = None) -> int:
    return run_converter(INFO, iter_samples, argv, converter="data_prep.cellpose", doc=__doc__,
                         channel_map=CHANNEL_MAP)


if __name__ == "__main__":
    raise SystemExit(main())
