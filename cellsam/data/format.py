"""The project's dataset format: writer, reader and validation.

A dataset is a folder::

    <dataset>/manifest.json          source, licence, converter, counts, filtering, checksums
    <dataset>/<split>/images.npy     float32 [N, 3, 512, 512] in [0, 1] (blank, nuclear, whole-cell)
    <dataset>/<split>/labels.npy     int32   [N, 1, 512, 512], 0 = background, objects 1..K
    <dataset>/<split>/coco.json      COCO instances (RLE masks, one category "cell")

Arrays are written in a streaming way (one image at a time) and read memory-mapped, so a
dataset larger than memory converts and trains. Every check that fails raises
`DatasetFormatError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellsam.metrics.coco import label_to_rles
from cellsam.utils.atomic import atomic_write_text

FORMAT_VERSION = 1
TILE_SIZE = 512
SPLITS = ("train", "val", "test")
IMAGES_FILE, LABELS_FILE, COCO_FILE, MANIFEST_FILE = (
    "images.npy",
    "labels.npy",
    "coco.json",
    "manifest.json",
)
CHANNEL_NAMES = ("blank", "nuclear", "whole_cell")
_CHUNK = 64  # images per validation chunk: bounds memory on huge memory-mapped arrays


def label_to_coco_annotations(label: np.ndarray, image_id: int, start_id: int = 1) -> list[dict]:
    """COCO instance annotations (RLE, bbox xywh, area, category 1) of a label image `[H, W]`.

    One pass over the pixels (`metrics.coco.label_to_rles`); annotation ids run from
    `start_id` in increasing object-id order.
    """
    rles, _, boxes, areas = label_to_rles(label)
    return [
        {"id": start_id + k, "image_id": int(image_id), "category_id": 1, "segmentation": rle,
         "area": int(area), "bbox": [float(v) for v in box], "iscrowd": 0}
        for k, (rle, box, area) in enumerate(zip(rles, boxes, areas))
    ]


class DatasetFormatError(ValueError):
    """A dataset folder does not follow the format; the message names the file and problem."""


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def image_hash(image: np.ndarray) -> str:
    """Content hash of a source image (shape, dtype and bytes): how a dataset recognises the
    same image again (`data_prep`'s duplicate check, the labelling loop's replace-on-add)."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha1(f"{arr.shape}{arr.dtype.str}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


class _NpyStreamWriter:
    """Appends equally shaped arrays to a `.npy` file without knowing their count up front.

    The header is written with room to spare and rewritten with the final count on close,
    so the data are written once. They go to a hidden sibling file renamed to `path` on
    close, so a write that fails (or `abort`) leaves what was at `path` before.
    """

    _HEADER_BYTES = 256  # multiple of 64 as the npy format wants; fits any 4-D shape

    def __init__(self, path: Path, item_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.item_shape, self.dtype = path, tuple(item_shape), np.dtype(dtype)
        self.count = 0
        self._tmp = path.with_name(f".{path.name}.partial")
        self._file = open(self._tmp, "wb")
        self._file.write(b"\0" * self._HEADER_BYTES)

    def append(self, item: np.ndarray) -> None:
        if item.shape != self.item_shape:
            raise ValueError(f"{self.path}: item shape {item.shape} != {self.item_shape}")
        self._file.write(np.ascontiguousarray(item, dtype=self.dtype).tobytes())
        self.count += 1

    def close(self) -> None:
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.count, *self.item_shape),
        }
        text = repr(header).encode("latin1")
        prefix = b"\x93NUMPY\x01\x00"
        pad = self._HEADER_BYTES - len(prefix) - 2 - len(text) - 1
        head = prefix + (len(text) + pad + 1).to_bytes(2, "little") + text + b" " * pad + b"\n"
        self._file.seek(0)
        self._file.write(head)
        self._file.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


@dataclass
class SplitWriter:
    """Streams one split (images, labels, COCO annotations) into `<dataset>/<split>/`.

    Use as a context manager; `add` takes one image `[3, 512, 512]` float32 in [0, 1] and
    its label image `[512, 512]` with objects numbered 1..K.
    """

    dataset_dir: Path
    split: str
    size: int = TILE_SIZE
    names: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    n_objects: int = 0

    def __post_init__(self) -> None:
        self.dataset_dir = Path(self.dataset_dir)
        self.dir = self.dataset_dir / self.split
        self.dir.mkdir(parents=True, exist_ok=True)
        self._images = _NpyStreamWriter(
            self.dir / IMAGES_FILE, (3, self.size, self.size), np.float32
        )
        self._labels = _NpyStreamWriter(self.dir / LABELS_FILE, (1, self.size, self.size), np.int32)
        self._annotations: list[dict] = []
        self._coco_images: list[dict] = []

    def add(self, image: np.ndarray, label: np.ndarray, name: str, source: str = "") -> None:
        index = self._images.count
        where = f"{self.dir} item {index} ({name})"
        if image.shape != (3, self.size, self.size):
            raise DatasetFormatError(
                f"{where}: image shape {image.shape}, want (3, {self.size}, {self.size})"
            )
        if label.shape[-2:] != (self.size, self.size):
            raise DatasetFormatError(
                f"{where}: label shape {label.shape}, want ({self.size}, {self.size})"
            )
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise DatasetFormatError(f"{where}: image values must be finite and in [0, 1]")
        if image[2].max() <= 0:
            raise DatasetFormatError(f"{where}: blue (whole-cell) channel is empty")
        label = label.reshape(self.size, self.size)
        anns = label_to_coco_annotations(label, image_id=index, start_id=len(self._annotations) + 1)
        self._images.append(image)
        self._labels.append(label[None])
        self._annotations.extend(anns)
        self._coco_images.append(
            {"id": index, "file_name": name, "height": self.size, "width": self.size}
        )
        self.names.append(name)
        self.sources.append(source or name)
        self.n_objects += len(anns)

    def close(self) -> dict:
        """Finish the files; returns this split's manifest entry (counts and checksums)."""
        self._images.close()
        self._labels.close()
        coco = {
            "info": {"format_version": FORMAT_VERSION, "split": self.split},
            "images": self._coco_images,
            "annotations": self._annotations,
            "categories": [{"id": 1, "name": "cell"}],
        }
        coco_path = self.dir / COCO_FILE
        atomic_write_text(coco_path, json.dumps(coco, separators=(",", ":")))
        return {
            "n_images": self._images.count,
            "n_objects": self.n_objects,
            "sources": sorted(set(self.sources)),
            "sha256": {
                IMAGES_FILE: sha256_file(self.dir / IMAGES_FILE),
                LABELS_FILE: sha256_file(self.dir / LABELS_FILE),
                COCO_FILE: sha256_file(coco_path),
            },
        }

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.summary = self.close()
        else:  # no half-written arrays; what was there before stays
            self._images.abort()
            self._labels.abort()


def write_manifest(
    dataset_dir: Path,
    *,
    name: str,
    source: str,
    licence: str,
    converter: str,
    converter_version: str,
    splits: dict[str, dict],
    filtering: dict | None = None,
    settings: dict | None = None,
) -> dict:
    """Write `<dataset>/manifest.json`; `splits` maps split name -> `SplitWriter.close()` output."""
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "source": source,
        "licence": licence,
        "converter": converter,
        "converter_version": converter_version,
        "channels": list(CHANNEL_NAMES),
        "tile_size": TILE_SIZE,
        "splits": splits,
        "filtering": filtering or {},
        "settings": settings or {},
    }
    path = Path(dataset_dir) / MANIFEST_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return manifest


@dataclass
class SplitData:
    """One opened split: memory-mapped arrays and the COCO dict."""

    name: str  # dataset name (manifest "name")
    split: str
    images: np.ndarray  # [N, 3, S, S] float32 memmap
    labels: np.ndarray  # [N, 1, S, S] int32 memmap
    coco: dict
    manifest: dict

    def __len__(self) -> int:
        return self.images.shape[0]


def read_manifest(dataset_dir: Path) -> dict:
    path = Path(dataset_dir) / MANIFEST_FILE
    if not Path(dataset_dir).is_dir():
        raise DatasetFormatError(f"{dataset_dir}: dataset folder does not exist")
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing manifest (is this a converted dataset folder?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetFormatError(f"{path}: not valid JSON ({err})") from err


def _load_npy(path: Path, dtype: np.dtype, ndim_shape: tuple) -> np.ndarray:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: missing file")
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise DatasetFormatError(f"{path}: not a readable .npy array ({err})") from err
    if arr.dtype != dtype:
        raise DatasetFormatError(f"{path}: dtype {arr.dtype}, want {np.dtype(dtype)}")
    want = tuple(s if s is not None else arr.shape[i] for i, s in enumerate(ndim_shape))
    if arr.ndim != len(ndim_shape) or arr.shape != want:
        raise DatasetFormatError(f"{path}: shape {arr.shape}, want {_shape_text(ndim_shape)}")
    return arr


def _shape_text(shape: tuple) -> str:
    return "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"


def _validate_images(path: Path, images: np.ndarray) -> None:
    for start in range(0, len(images), _CHUNK):
        chunk = np.asarray(images[start : start + _CHUNK])
        if not np.isfinite(chunk).all():
            bad = start + int(np.flatnonzero(~np.isfinite(chunk).reshape(len(chunk), -1).all(1))[0])
            raise DatasetFormatError(f"{path}: image {bad} has NaN or infinite values")
        lo, hi = chunk.min(axis=(1, 2, 3)), chunk.max(axis=(1, 2, 3))
        if (lo < 0).any() or (hi > 1).any():
            bad = start + int(np.flatnonzero((lo < 0) | (hi > 1))[0])
            raise DatasetFormatError(
                f"{path}: image {bad} has values in [{lo.min():.3g}, {hi.max():.3g}], want [0, 1]"
            )
        blue = chunk[:, 2].reshape(len(chunk), -1).max(1)
        if (blue <= 0).any():
            bad = start + int(np.flatnonzero(blue <= 0)[0])
            raise DatasetFormatError(f"{path}: image {bad} has an empty blue (whole-cell) channel")


def _validate_labels(path: Path, labels: np.ndarray, coco: dict, coco_path: Path) -> None:
    per_image: dict[int, int] = {}
    for ann in coco.get("annotations", []):
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    n_coco_images = len(coco.get("images", []))
    if n_coco_images != len(labels):
        raise DatasetFormatError(
            f"{coco_path}: lists {n_coco_images} images but {path} holds {len(labels)}"
        )
    for start in range(0, len(labels), _CHUNK):
        chunk = np.asarray(labels[start : start + _CHUNK])
        if (chunk.min(axis=(1, 2, 3)) < 0).any():
            raise DatasetFormatError(f"{path}: negative label values")
        for k, lab in enumerate(chunk):
            i = start + k
            n = int(np.count_nonzero(np.bincount(lab.ravel())[1:]))
            if n != per_image.get(i, 0):
                raise DatasetFormatError(
                    f"{path}: image {i} has {n} objects but {coco_path} has {per_image.get(i, 0)}"
                )


def open_split(dataset_dir: Path, split: str, validate: bool = True) -> SplitData:
    """Open `<dataset>/<split>` memory-mapped; with `validate`, check every array value.

    Raises `DatasetFormatError` for a missing file, a wrong dtype or shape, values outside
    [0, 1], an empty blue channel, or labels that disagree with `coco.json`.
    """
    dataset_dir = Path(dataset_dir)
    manifest = read_manifest(dataset_dir)
    split_dir = dataset_dir / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in dataset_dir.iterdir() if p.is_dir())
        raise DatasetFormatError(f"{split_dir}: no split '{split}' (found: {found})")
    size = TILE_SIZE
    images = _load_npy(split_dir / IMAGES_FILE, np.dtype(np.float32), (None, 3, size, size))
    labels = _load_npy(split_dir / LABELS_FILE, np.dtype(np.int32), (len(images), 1, size, size))
    coco_path = split_dir / COCO_FILE
    if not coco_path.is_file():
        raise DatasetFormatError(f"{coco_path}: missing file")
    try:
        coco = json.loads(coco_path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetFormatError(f"{coco_path}: not valid JSON ({err})") from err
    if validate:
        _validate_images(split_dir / IMAGES_FILE, images)
        _validate_labels(split_dir / LABELS_FILE, labels, coco, coco_path)
    name = manifest.get("name") or dataset_dir.name
    return SplitData(name, split, images, labels, coco, manifest)


def verify_checksums(dataset_dir: Path) -> None:
    """Compare every split file against the manifest's sha256; raise on a mismatch."""
    manifest = read_manifest(dataset_dir)
    for split, info in manifest.get("splits", {}).items():
        for fname, digest in info.get("sha256", {}).items():
            path = Path(dataset_dir) / split / fname
            if not path.is_file():
                raise DatasetFormatError(f"{path}: missing file")
            if sha256_file(path) != digest:
                raise DatasetFormatError(f"{path}: checksum differs from {MANIFEST_FILE}")


def write_dataset(
    dataset_dir: Path,
    splits: dict[str, Iterable[tuple[np.ndarray, np.ndarray, str, str]]],
    **manifest_fields,
) -> dict:
    """Write every split from iterables of `(image, label, name, source)` and the manifest."""
    infos = {}
    for split, items in splits.items():
        with SplitWriter(Path(dataset_dir), split) as writer:
            for image, label, name, source in items:
                writer.add(image, label, name, source)
        infos[split] = writer.summary
    return write_manifest(Path(dataset_dir), splits=infos, **manifest_fields)
