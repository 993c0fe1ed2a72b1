"""Frozen-trunk feature cache: the trunk's pre-neck features of every image, in every cached
view, computed once and read from a memory-mapped file in every later epoch.

With the trunk frozen (stage 2 always, stage 1 with `freeze_trunk`), the trunk's output for
an image depends only on the trunk's weights and the image, so re-running it each epoch is
wasted work; on a CPU it is most of a step. Augmentation is then limited to what the cache
holds: the views listed in `views`, a subset of the 8 dihedral transforms (`apply_view`), one
drawn per training item; validation reads view 0 (the image as stored).

A cache folder is named by a key that hashes the trunk's weights and input scaling, the
dataset split's array checksums, the item indices, the input size, the views and the
storage dtype, so a cache of other weights or other data is never read: it simply has
another name. Folders are written under a hidden temporary name and renamed when complete,
so an interrupted build leaves no cache behind; the temporary folder of a build whose process
was killed outright (no chance to clean up) is removed by the next build on the same host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cellsam.data.format import IMAGES_FILE, LABELS_FILE, sha256_file
from cellsam.data.transforms import label_targets, resize_image

log = logging.getLogger(__name__)

CACHE_VERSION = 1
FEATURES_FILE, META_FILE = "features.npy", "meta.json"
DTYPES = {"float16": np.float16, "float32": np.float32}
NUM_VIEWS = 8
TMP_MARK = ".tmp-"  # .<key>.tmp-<host>-<pid>: a build in progress (or killed)


def apply_view(x: torch.Tensor, view: int) -> torch.Tensor:
    """Dihedral view `view` (0-7) of `[..., H, W]`: views 4-7 flip left-right first, then
    every view rotates by `view % 4` quarter turns (0: unchanged)."""
    if not 0 <= view < NUM_VIEWS:
        raise ValueError(f"view must be in 0..{NUM_VIEWS - 1}, got {view}")
    if view >= 4:
        x = x.flip(-1)
    return torch.rot90(x, view % 4, (-2, -1)) if view % 4 else x


def trunk_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of everything the trunk's output depends on: its parameters and buffers (the
    image encoder without the neck, and a separate detection trunk if any) and the input
    scaling."""
    h = hashlib.sha256()
    encoder = model.sam.image_encoder
    tensors = [(f"image_encoder.{k}", v) for k, v in encoder.state_dict().items()
               if not k.startswith("neck.")]
    if model.finder_encoder is not None:
        tensors += [(f"finder_encoder.{k}", v)
                    for k, v in model.finder_encoder.state_dict().items()]
    tensors += [("pixel_mean", model.sam.pixel_mean), ("pixel_std", model.sam.pixel_std)]
    for name, value in tensors:
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def split_fingerprint(data: Any) -> str:
    """Checksums of a split's image and label arrays: the manifest's, else computed."""
    sums = dict(data.manifest.get("splits", {}).get(data.split, {}).get("sha256", {}))
    root = Path(data.images.filename).parent
    for name in (IMAGES_FILE, LABELS_FILE):
        if name not in sums:
            sums[name] = sha256_file(root / name)
    return hashlib.sha256(json.dumps([sums[IMAGES_FILE], sums[LABELS_FILE]]).encode()).hexdigest()


def cache_key(trunk: str, split: str, indices: Sequence[int], input_size: int,
              views: Sequence[int], dtype: str) -> str:
    """The cache folder's name: hash of every input of the cached numbers."""
    payload = {"version": CACHE_VERSION, "trunk": trunk, "split": split,
               "indices": hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest(),
               "input_size": int(input_size), "views": [int(v) for v in views], "dtype": dtype}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


class FeatureStore:
    """A complete cache folder: features `[N, V, C, h, w]` memory-mapped, N the dataset's
    items in order and V the cached views in `views` order."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / META_FILE
        try:
            self.meta = json.loads(meta_path.read_text())
            self.features = np.load(self.folder / FEATURES_FILE, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise ValueError(f"{self.folder}: unreadable feature cache ({err}); delete the "
                             "folder to rebuild it") from err
        self.views = [int(v) for v in self.meta["views"]]
        expected = (int(self.meta["items"]), len(self.views))
        if self.features.shape[:2] != expected:
            raise ValueError(f"{self.folder / FEATURES_FILE}: shape {self.features.shape} does "
                             f"not match {META_FILE} ({expected} items x views)")

    def __len__(self) -> int:
        return self.features.shape[0]

    def get(self, item: int, view: int) -> torch.Tensor:
        """Features `[C, h, w]` float32 of item `item` in dihedral view `view`."""
        pos = self.views.index(view)
        return torch.from_numpy(np.array(self.features[item, pos], np.float32))


def build_feature_store(encode: Callable[[torch.Tensor], torch.Tensor], dataset: Any,
                        views: Sequence[int], cache_root: Path, *, fingerprint: str,
                        input_size: int, dtype: str = "float16", batch_size: int = 4,
                        device: torch.device | str = "cpu") -> FeatureStore:
    """The store of `dataset` (a `CellSplitDataset`) under `encode`, built if absent.

    `encode` maps images `[B, 3, S, S]` to features `[B, C, h, w]` (the caller puts its
    model in eval mode); `fingerprint` names what it computes (`trunk_fingerprint` plus
    which trunk). Each item's image is resized to `input_size`, put in each view and
    encoded; rows are written as they are computed.
    """
    if dtype not in DTYPES:
        raise ValueError(f"feature cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    views = [int(v) for v in views]
    for v in views:
        apply_view(torch.zeros(1, 1), v)  # range check
    if not views or views[0] != 0 or len(set(views)) != len(views):
        raise ValueError(f"feature cache views must start with 0 (the stored image) and not "
                         f"repeat, got {views}")
    data = dataset.data
    key = cache_key(fingerprint, f"{data.name}/{data.split}:{split_fingerprint(data)}",
                    dataset.indices, input_size, views, dtype)
    folder = Path(cache_root) / key
    if (folder / META_FILE).is_file():
        return FeatureStore(folder)
    remove_dead_builds(Path(cache_root))
    tmp = folder.with_name(f".{key}{TMP_MARK}{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with torch.no_grad():
            _write_features(encode, dataset, views, tmp, DTYPES[dtype], input_size,
                            batch_size, device)
        meta = {"version": CACHE_VERSION, "dataset": data.name, "split": data.split,
                "items": len(dataset), "views": views, "dtype": dtype,
                "input_size": input_size, "fingerprint": fingerprint}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FeatureStore(folder)


def remove_dead_builds(cache_root: Path) -> list[Path]:
    """Remove the temporary folders of builds on this host whose process no longer runs
    (killed by SIGKILL or the OOM killer, so never cleaned); returns what was removed.

    Another host's builds (a shared file system) are left alone: their process ids mean
    nothing here.
    """
    removed = []
    for path in cache_root.glob(f".*{TMP_MARK}*") if cache_root.is_dir() else []:
        host, _, pid = path.name.split(TMP_MARK, 1)[1].rpartition("-")
        if host == socket.gethostname() and pid.isdigit() and not _process_runs(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, under another user
        pass
    return True


def _write_features(encode, dataset, views, folder: Path, np_dtype, input_size, batch_size,
                    device) -> None:
    memmap = None
    for start in range(0, len(dataset), batch_size):
        rows = dataset.indices[start:start + batch_size]
        images = torch.stack([resize_image(torch.from_numpy(dataset.data.images[i].copy()),
                                           input_size) for i in rows]).to(device)
        per_view = [encode(apply_view(images, v)).float().cpu() for v in views]
        block = torch.stack(per_view, 1).numpy()  # [b, V, C, h, w]
        stored = block.astype(np_dtype)
        if not np.isfinite(stored).all():
            raise ValueError(f"{dataset.data.name}/{dataset.data.split}: trunk features "
                             f"overflow {np.dtype(np_dtype).name}; use dtype float32")
        if memmap is None:
            shape = (len(dataset), *block.shape[1:])
            memmap = np.lib.format.open_memmap(folder / FEATURES_FILE, mode="w+",
                                               dtype=np_dtype, shape=shape)
        memmap[start:start + len(rows)] = stored
        if (start // batch_size) % 25 == 0:
            log.info("feature cache %s/%s: %d / %d items", dataset.data.name,
                     dataset.data.split, start + len(rows), len(dataset))
    if memmap is not None:
        memmap.flush()


class CachedSplitDataset(Dataset):
    """A `CellSplitDataset` whose items carry `features` `[C, h, w]` from a store instead of
    `image`: training items in a random cached view (the label in the same view), other
    items in view 0."""

    def __init__(self, base: Any, store: FeatureStore, train: bool) -> None:
        if len(store) != len(base):
            raise ValueError(f"{store.folder}: {len(store)} cached items for a dataset of "
                             f"{len(base)}")
        self.base, self.store, self.train = base, store, train
        self.name, self.indices = base.name, base.indices

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.base.indices[i]
        views = self.store.views
        view = views[int(torch.randint(0, len(views), ()))] if self.train else 0
        label = torch.from_numpy(self.base.data.labels[index, 0].astype("int64"))
        label = apply_view(label, view).contiguous()
        return {"features": self.store.get(i, view), "label": label, "dataset": self.name,
                "index": index, "view": view, **label_targets(label)}
