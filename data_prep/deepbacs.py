"""DeepBacs: bacterial segmentation sets (Spahn et al., Communications Biology 2022).

Source: https://github.com/HenriquesLab/DeepBacs/wiki/Segmentation (Zenodo records, e.g.
5550933 S. aureus, 5550935 E. coli brightfield, 5639253 B. subtilis, 5551009 mixed).
Licence: CC BY 4.0 (as stated on the Zenodo records).

Expected layout: one folder per species/set (the zips extracted side by side, or a single
zip), each with the publisher's split folders of paired TIFFs of the same name::

    <src>/<set>/training/source/<name>.tif    <src>/<set>/training/target/<name>.tif
    <src>/<set>/test/source/<name>.tif        <src>/<set>/test/target/<name>.tif

Split folders may be named training|train, val|validation, test; image folders
source|images|image|raw and label folders target|masks|labels|label|mask; the set may sit
any number of levels down. Targets are instance labels; a binary target becomes its
connected components. Images are one channel (to the whole-cell slot); several channels are
averaged unless `--channels` says otherwise. The group id is `<set>/<name>` (the first
folder under the source and the file stem), so images of one field in two modalities of
one set share a split. The publisher's splits are kept; without val, 10% of the train
groups go to val (seeded).

    python -m data_prep.deepbacs --src deepbacs --out data     # then data=deepbacs
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from data_prep.cli import run_converter
from data_prep.common import (
    TIFF_SUFFIXES,
    DatasetInfo,
    SourceSample,
    ensure_instances,
    layout_error,
    match_pairs,
    read_image,
    read_label,
)

INFO = DatasetInfo(
    name="deepbacs",
    source="https://github.com/HenriquesLab/DeepBacs/wiki/Segmentation (Zenodo)",
    licence="CC BY 4.0",
    layout="<set>/{training,test}/source/*.tif with <set>/{training,test}/target/*.tif",
)
SPLIT_NAMES = {"training": "train", "train": "train", "val": "val", "validation": "val",
               "test": "test"}
IMAGE_DIRS = ("source", "images", "image", "raw")
LABEL_DIRS = ("target", "masks", "labels", "label", "mask")


def _child(folder: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        for cand in (folder / n, folder / n.capitalize()):
            if cand.is_dir():
                return cand
    return None


def find_split_folders(root: Path) -> list[tuple[str, str, Path, Path]]:
    """`(set, split, images_dir, labels_dir)` for every split folder under `root`."""
    found = []
    for d in sorted(p for p in [root, *root.rglob("*")] if p.is_dir()):
        split = SPLIT_NAMES.get(d.name.lower())
        images, labels = _child(d, IMAGE_DIRS), _child(d, LABEL_DIRS)
        if split is None or images is None or labels is None:
            continue
        rel = d.relative_to(root).parts
        found.append((rel[0] if len(rel) > 1 else "", split, images, labels))
    if not found:
        raise layout_error(root, "<set>/training/ and <set>/test/ folders holding source/ and "
                                 "target/ TIFFs")
    return found


def iter_samples(root: Path, args: argparse.Namespace, with_labels: bool) -> Iterator[SourceSample]:
    for set_name, split, images, labels in find_split_folders(root):
        for key, img_path, lab_path in match_pairs(images, labels):
            if img_path.suffix.lower() not in TIFF_SUFFIXES:
                continue
            group = f"{set_name}/{key}" if set_name else key
            rel = images.parent.relative_to(root).as_posix()
            rel = split if rel == "." else rel
            label = ensure_instances(read_label(lab_path)) if with_labels else None
            yield SourceSample(f"{rel}/{key}", group, split, read_image(img_path), label)


def main(argv: list[str] | None = None) -> int:
    return run_converter(INFO, iter_samples, argv, converter="data_prep.deepbacs", doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
