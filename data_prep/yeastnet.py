"""YeastNet: budding yeast brightfield time-lapses (Salem et al., CSBJ 2021).

Source: https://github.com/kaernlab/YeastNet ("Images with Ground Truth Masks", linked from
the README). Licence: as stated by the YeastNet authors (check before redistributing
converted data).

Expected layout (the downloaded folder or its zip)::

    <src>/Datasets/<set>/Images/im<nnn>.tif
    <src>/Datasets/<set>/Masks/mask<nnn>.npy    (or .tif) instance labels

`Datasets/` may be the source itself or any folder below it; every folder with `Images/`
and `Masks/` is a set (a time-lapse). Binary masks become their connected components. One
channel, to the whole-cell slot. No publisher split: 80/10/10 by image, seeded; with
`--group-by set` all frames of a time-lapse share a split instead.

    python -m data_prep.yeastnet --src YeastNet_data --out data     # then data=yeastnet
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from data_prep.cli import run_converter
from data_prep.common import (
    DatasetInfo,
    SourceSample,
    ensure_instances,
    layout_error,
    match_pairs,
    read_image,
    read_label,
)

INFO = DatasetInfo(
    name="yeastnet",
    source="https://github.com/kaernlab/YeastNet (Images with Ground Truth Masks)",
    licence="see the YeastNet repository",
    layout="Datasets/<set>/Images/im<nnn>.tif with Datasets/<set>/Masks/mask<nnn>.npy",
)


def find_sets(root: Path) -> list[Path]:
    """Folders under `root` (any depth, or `root` itself) holding `Images/` and `Masks/`."""
    cands = [root, *root.rglob("*")] if root.is_dir() else []
    sets = sorted(p for p in cands if (p / "Images").is_dir() and (p / "Masks").is_dir())
    if not sets:
        raise layout_error(root, "Datasets/<set>/Images/im*.tif and Datasets/<set>/Masks/mask*.npy")
    return sets


def _mask_stem(key: str) -> str:
    return "mask" + key[2:] if key.startswith("im") else key


def iter_samples(root: Path, args: argparse.Namespace, with_labels: bool) -> Iterator[SourceSample]:
    for folder in find_sets(root):
        set_name = folder.name
        for key, img_path, lab_path in match_pairs(folder / "Images", folder / "Masks",
                                                   label_stem=_mask_stem):
            name = f"{set_name}/{key}"
            group = set_name if args.group_by == "set" else name
            label = ensure_instances(read_label(lab_path)) if with_labels else None
            yield SourceSample(name, group, None, read_image(img_path), label)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group-by", choices=("image", "set"), default="image",
                   help="split unit: each image (default) or each time-lapse set")


def main(argv: list[str] | None = None) -> int:
    return run_converter(INFO, iter_samples, argv, converter="data_prep.yeastnet", doc=__doc__,
                         add_arguments=add_arguments,
                         extra_settings=lambda a: {"group_by": a.group_by})


if __name__ == "__main__":
    raise SystemExit(main())
