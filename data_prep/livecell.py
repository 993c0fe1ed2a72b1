"""LIVECell: phase-contrast images of 8 cell lines (Edlund et al., Nature Methods 2021).

The zero-shot test set of CellSAM: by default only the test split is converted
(`data=livecell` evaluates on it); `--splits train val test` converts all three.

Source: https://sartorius-research.github.io/LIVECell/ (`images.zip` and the COCO files
`livecell_coco_{train,val,test}.json`). Licence: CC BY-NC 4.0.

Expected layout (a folder; `images.zip` may be given extracted or as the source itself
when the JSON files sit beside it in an extracted folder)::

    <src>/images/livecell_test_images/<CellType>/<file>.tif    (or without <CellType>/)
    <src>/images/livecell_train_val_images/<CellType>/<file>.tif
    <src>/.../livecell_coco_test.json    (and _train, _val: found anywhere under <src>)

Annotations (polygons or RLE) become one label image per image. Overlap rule (shared with
DSB's per-nucleus masks, `instances_to_label`): a pixel claimed by several annotations goes
to the smallest of them; an annotation left with less than half of its area visible
(typically a duplicate outline of the same cell) is dropped; both counted in the manifest
(`overlap_pixels`, `overlap_dropped`). Then images and labels are rescaled x2 (bicubic
image, nearest labels; `--scale`) before the common steps, as in the paper.

    python -m data_prep.livecell --src LIVECell_dataset_2021 --out data   # then data=livecell
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from data_prep.cli import run_converter
from data_prep.common import (
    DatasetInfo,
    DatasetLayoutError,
    SourceSample,
    crop_mask,
    instances_to_label,
    layout_error,
    read_image,
)

INFO = DatasetInfo(
    name="livecell",
    source="https://sartorius-research.github.io/LIVECell/ (images.zip, livecell_coco_*.json)",
    licence="CC BY-NC 4.0",
    layout="images/livecell_{test,train_val}_images/**/*.tif and livecell_coco_{split}.json",
)


@lru_cache(maxsize=4)
def load_coco(path: Path) -> tuple[list[dict], dict[int, list[dict]]]:
    """Images (sorted by file name) and annotations per image id of one COCO file.

    LIVECell's files store `annotations` as a dict keyed by annotation id (which the
    reference COCO API cannot read); a standard list works too.
    """
    coco = json.loads(Path(path).read_text())
    if "images" not in coco or "annotations" not in coco:
        raise DatasetLayoutError(f"{path}: not a COCO instances file (no images/annotations)")
    anns, images = coco["annotations"], coco["images"]
    anns = anns.values() if isinstance(anns, dict) else anns
    images = images.values() if isinstance(images, dict) else images
    per_image: dict[int, list[dict]] = {}
    for ann in anns:
        per_image.setdefault(ann["image_id"], []).append(ann)
    return sorted(images, key=lambda im: im["file_name"]), per_image


def annotation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Boolean mask `[H, W]` of a COCO segmentation (polygons, RLE or uncompressed RLE)."""
    if isinstance(segmentation, list):
        polys = [p for p in segmentation if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def annotations_to_label(anns: list[dict], height: int, width: int) -> tuple[np.ndarray, dict]:
    """Label image `[H, W]` of one image's annotations (ordered by id) and overlap counts."""
    crops = []
    for ann in sorted(anns, key=lambda a: a["id"]):
        c = crop_mask(annotation_mask(ann["segmentation"], height, width))
        if c is not None:
            crops.append(c)
    return instances_to_label(crops, (height, width))


def find_files(root: Path, splits: list[str]) -> tuple[dict[str, Path], dict[str, Path]]:
    """COCO file per split and image path per file name under `root`."""
    jsons = {}
    for split in splits:
        hits = sorted(root.rglob(f"livecell_coco_{split}.json"))
        if not hits:
            raise layout_error(root, f"livecell_coco_{split}.json (anywhere under the source)")
        jsons[split] = hits[0]
    images = {p.name: p for p in sorted(root.rglob("*.tif"))}
    if not images:
        raise layout_error(root, "images/livecell_*_images/ with the .tif images")
    return jsons, images


def iter_samples(root: Path, args: argparse.Namespace, with_labels: bool) -> Iterator[SourceSample]:
    jsons, paths = find_files(root, args.splits)
    for split in args.splits:
        images, per_image = load_coco(jsons[split])
        for im in images:
            fname = Path(im["file_name"]).name
            if fname not in paths:
                raise layout_error(root, f"the image {fname} listed in {jsons[split].name}",
                                   where=root / "images" if (root / "images").is_dir() else root)
            image = read_image(paths[fname])
            if image.shape[:2] != (im["height"], im["width"]):
                raise DatasetLayoutError(f"{paths[fname]}: shape {image.shape} != COCO size")
            label, counts = None, {}
            if with_labels:
                label, counts = annotations_to_label(per_image.get(im["id"], []),
                                                     im["height"], im["width"])
            name = f"{split}/{Path(fname).stem}"
            yield SourceSample(name, name, split, image, label, counts=counts)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--splits", nargs="+", choices=("train", "val", "test"), default=["test"],
                   help="publisher splits to convert (default: test, the zero-shot set)")
    p.add_argument("--scale", type=float, default=2.0, help="resize factor (paper: 2)")


def main(argv: list[str] | None = None) -> int:
    return run_converter(INFO, iter_samples, argv, converter="data_prep.livecell", doc=__doc__,
                         add_arguments=add_arguments,
                         extra_settings=lambda a: {"splits": sorted(a.splits)})


if __name__ == "__main__":
    raise SystemExit(main())
