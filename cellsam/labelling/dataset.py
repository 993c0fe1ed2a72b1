"""Add a corrected image to a training set in the project's format (`cellsam.data.format`).

An added image goes through the same steps as a converted one (`data_prep.pipeline`): the
prepared image (channels placed, percentile clip, CLAHE: the predictor's `prepare`) cut
into 512 x 512 tiles with 25 % overlap (zero-padded when smaller), labels filtered per tile
(disjoint and 1-px-thin objects dropped, renumbered 1..N), tiles without labels dropped,
all written by `SplitWriter` and `write_manifest`. So `python train.py stage=sam
data=<folder> finder_ckpt=...` fine-tunes on the corrections like on any dataset.

Bookkeeping lives in the manifest, under `settings.labelling.images`: per added image, keyed
by its content hash (`image_hash`, the hash `data_prep` deduplicates with), its name, split,
source and tile names. Adding an image whose hash is there replaces its tiles, in whatever
split they were.

The write is atomic: the new dataset is built in a hidden sibling folder (unchanged split
files hard-linked, or copied where links fail), validated, then swapped in by two renames;
any error before the swap deletes the new folder and leaves the dataset as it was.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cellsam.data.format import (
    COCO_FILE,
    IMAGES_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    SPLITS,
    TILE_SIZE,
    SplitWriter,
    image_hash,
    open_split,
    read_manifest,
    verify_checksums,
    write_manifest,
)
from cellsam.preprocess.tiling import OVERLAP, training_tiles

RECORD_KEY = "labelling"
SPLIT_FILES = (IMAGES_FILE, LABELS_FILE, COCO_FILE)


@dataclass
class AddResult:
    """What an add wrote: the tiles' names in `split`, their object count, the objects the
    tile filter dropped (`disjoint`, `thin`), and the split an earlier copy of the same
    image was replaced in (None: it was new)."""

    dataset_dir: Path
    split: str
    names: list[str]
    n_objects: int
    dropped: dict[str, int]
    replaced: str | None


def image_tiles(prepared: np.ndarray, labels: np.ndarray, name: str
                ) -> tuple[list[tuple[np.ndarray, np.ndarray, str]], dict[str, int]]:
    """`data_prep`'s per-image steps on a prepared image `[3, H, W]` and labels `[H, W]`:
    kept tiles `(image [3, 512, 512], labels [512, 512] int32, name)` and the dropped counts.
    A tile's name is `name` for an image that fits one tile, else `name_y<y0>_x<x0>`."""
    if prepared.ndim != 3 or prepared.shape[0] != 3 or labels.shape != prepared.shape[1:]:
        raise ValueError(f"want image [3, H, W] and labels [H, W], got {prepared.shape} and "
                         f"{labels.shape}")
    tiles, counts = training_tiles(np.asarray(prepared, np.float32), np.asarray(labels),
                                   TILE_SIZE, OVERLAP)
    dropped = {"disjoint": counts["disjoint_labels"], "thin": counts["thin_labels"],
               "tiles_without_labels": counts["tiles_without_labels"],
               "tiles_blank_image": counts["tiles_blank_image"]}
    return [(image, lab, name + suffix) for suffix, image, lab in tiles], dropped


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_other(src_dir: Path, dst_dir: Path, skip: set[str]) -> None:
    """Everything in the dataset folder but the rewritten splits and the manifest (files
    a user put there, e.g. a README) comes along unchanged."""
    for entry in src_dir.iterdir():
        if entry.name in skip:
            continue
        target = dst_dir / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, target)


def add_to_training_set(dataset_dir: str | Path, prepared: np.ndarray, labels: np.ndarray,
                        name: str, image_hash: str, split: str = "train",
                        source: str | None = None, prep: dict[str, Any] | None = None,
                        validate: bool = True, licence: str = "user data") -> AddResult:
    """Add one prepared image `[3, H, W]` (float32 in [0, 1], as `CellSAMPredictor.prepare`
    gives) with its labels `[H, W]` to `split` of the dataset at `dataset_dir` (created when
    absent; any converted dataset works). `image_hash`: the source image's `image_hash`;
    an image already added under it is replaced. `prep`: the preprocessing settings, kept
    in the manifest record. `validate`: open the new splits with full validation and check
    every checksum before the swap. Raises `ValueError` when no tile keeps a label (nothing
    is written then).
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose from {SPLITS}")
    final = Path(dataset_dir).expanduser()
    tile_name = f"{name}-{image_hash[:10]}"
    tiles, dropped = image_tiles(prepared, np.asarray(labels), tile_name)
    if not tiles:
        raise ValueError(f"{name}: no labelled cell survives the tile filter ({dropped}); "
                         "nothing to add")
    old = read_manifest(final) if (final / MANIFEST_FILE).is_file() else None
    if old is None and final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise ValueError(f"{final}: exists and is not a dataset (no {MANIFEST_FILE}); "
                         "refusing to write there")
    settings = dict(old["settings"]) if old else {}
    record = dict(settings.get(RECORD_KEY, {}))
    images = {k: dict(v) for k, v in record.get("images", {}).items()}
    previous = images.pop(image_hash, None)
    removed = set(previous["tiles"]) if previous else set()
    replaced_split = previous["split"] if previous else None
    source = source or f"labelling:{name}"
    images[image_hash] = {"name": name, "split": split, "source": source,
                          "tiles": [t[2] for t in tiles]}
    old_splits = dict(old["splits"]) if old else {}
    rewrite = {split} | ({replaced_split} if replaced_split else set())

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.labelling-{uuid.uuid4().hex[:8]}.partial"
    try:
        tmp.mkdir()
        infos: dict[str, dict] = {}
        order = [*SPLITS, *(s for s in old_splits if s not in SPLITS)]
        for s in order:
            if s in old_splits and s not in rewrite:  # untouched: the same bytes
                (tmp / s).mkdir()
                for f in SPLIT_FILES:
                    _link_or_copy(final / s / f, tmp / s / f)
                infos[s] = old_splits[s]
            elif s in old_splits or s == split:
                info = _rewrite_split(final, tmp, s, old_splits.get(s), removed,
                                      tiles if s == split else [], source, previous)
                if info["n_images"] == 0:  # its only image moved to another split
                    shutil.rmtree(tmp / s)
                else:
                    infos[s] = info
        if old is not None:
            _copy_other(final, tmp, {MANIFEST_FILE, *old_splits})
        record = {**record, "version": 1, "images": images}
        if prep is not None:
            record["prep"] = {**dict(prep), "tile": TILE_SIZE, "overlap": OVERLAP}
        settings[RECORD_KEY] = record
        write_manifest(
            tmp, name=old["name"] if old else final.name,
            source=old["source"] if old else "human-in-the-loop labelling (cellsam.labelling)",
            licence=old["licence"] if old else licence,
            converter=old["converter"] if old else "cellsam.labelling",
            converter_version=old["converter_version"] if old else "1",
            splits=infos,
            filtering=old.get("filtering") if old else {}, settings=settings)
        if validate:
            for s in rewrite & set(infos):
                open_split(tmp, s, validate=True)
            verify_checksums(tmp)
        _swap(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return AddResult(final, split, [t[2] for t in tiles], sum(int(t[1].max()) for t in tiles),
                     {k: v for k, v in dropped.items() if v}, replaced_split)


def _rewrite_split(final: Path, tmp: Path, split: str, info: dict | None, removed: set[str],
                   tiles: list, source: str, previous: dict | None) -> dict:
    """Stream a split into `tmp` without the `removed` tiles, then `tiles` at its end; the
    manifest's source list follows (old sources minus the replaced image's, plus `source`)."""
    with SplitWriter(tmp, split) as writer:
        if info is not None:
            data = open_split(final, split, validate=False)
            for i, entry in enumerate(data.coco["images"]):
                if entry["file_name"] in removed:
                    continue
                writer.add(np.asarray(data.images[i]), np.asarray(data.labels[i, 0]),
                           entry["file_name"])
            del data
        for image, label, name in tiles:
            writer.add(image, label, name, source)
    summary = writer.summary
    sources = set(info["sources"]) if info else set()
    if previous is not None and previous.get("split") == split:
        sources.discard(previous.get("source"))
    if tiles:
        sources.add(source)
    summary["sources"] = sorted(sources)
    return summary


def _swap(tmp: Path, final: Path) -> None:
    """Put `tmp` at `final`: the old folder is renamed aside, the new one renamed in, the
    old one deleted; if the second rename fails the old folder is renamed back."""
    if not final.exists():
        os.rename(tmp, final)
        return
    if final.is_dir() and not any(final.iterdir()):
        final.rmdir()
        os.rename(tmp, final)
        return
    aside = final.parent / f".{final.name}.labelling-{uuid.uuid4().hex[:8]}.old"
    os.rename(final, aside)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(aside, final)
        raise
    shutil.rmtree(aside, ignore_errors=True)


__all__ = ["AddResult", "add_to_training_set", "image_hash", "image_tiles"]
