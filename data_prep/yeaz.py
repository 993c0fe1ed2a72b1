"""YeaZ: budding yeast in brightfield and phase contrast (Dietler et al., Nat. Commun. 2020).

Source: https://www.epfl.ch/labs/lpbs/data-and-software/ (`gold-standard-BF-V-1.tar.gz`,
`gold-standard-PhC-plus-2.tar.gz`). Licence: as stated on the LPBS data page (check it
before redistributing converted data).

Expected layout (a folder holding one or both sets, or one archive)::

    <src>/gold-standard-BF-V-1/<name>_im.tif       <src>/gold-standard-BF-V-1/<name>_mask.tif
    <src>/gold-standard-PhC-plus-2/<name>_im.tif   (time-lapse stacks [T, H, W] allowed)

Any folder under the source holding `*_im.tif` with matching `*_mask.tif` is a set. A stack
gives one sample per frame, all frames of one file in one group (one split). One channel,
to the whole-cell slot. No publisher split: 80/10/10 by file, seeded.

    python -m data_prep.yeaz --src yeaz --out data     # then data=yeaz
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
    stack_frames,
)

INFO = DatasetInfo(
    name="yeaz",
    source="https://www.epfl.ch/labs/lpbs/data-and-software/ (YeaZ gold-standard sets)",
    licence="see the EPFL LPBS data page",
    layout="<set>/<name>_im.tif with <name>_mask.tif (e.g. gold-standard-BF-V-1/)",
)


def find_sets(root: Path) -> list[Path]:
    """Folders under `root` (or `root` itself) holding `*_im.tif` files."""
    sets = sorted({p.parent for p in root.rglob("*_im.tif*")}) if root.is_dir() else []
    if not sets:
        raise layout_error(root, "folders with <name>_im.tif and <name>_mask.tif")
    return sets


def iter_samples(root: Path, args: argparse.Namespace, with_labels: bool) -> Iterator[SourceSample]:
    for folder in find_sets(root):
        set_name = folder.relative_to(root).as_posix() if folder != root else INFO.name
        for key, img_path, lab_path in match_pairs(folder, folder, image_suffix="_im",
                                                   label_suffix="_mask"):
            group = f"{set_name}/{key}"
            frames = stack_frames(read_image(img_path), read_label(lab_path))
            for t, (img, lab) in enumerate(frames):
                name = group if len(frames) == 1 else f"{group}_t{t:04d}"
                yield SourceSample(name, group, None, img, lab if with_labels else None)


def main(argv: list[str] | None = None) -> int:
    return run_converter(INFO, iter_samples, argv, converter="data_prep.yeaz", doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
