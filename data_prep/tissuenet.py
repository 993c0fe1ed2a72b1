"""TissueNet v1.1: multiplexed tissue images with whole-cell and nuclear labels (Greenwald et al.).

Source: https://datasets.deepcell.org/data (TissueNet v1.1, `tissuenet_v1.1.zip`; free
registration). Licence: modified Apache 2.0, non-commercial use only (see the site).

Expected layout (the zip, its extracted folder, or a single `.npz`)::

    <src>/tissuenet_v1.1_train.npz   X [N, H, W, 2] (channel 0 nuclear, 1 whole-cell/membrane)
    <src>/tissuenet_v1.1_val.npz     y [N, H, W, 2] (channel 0 whole-cell, 1 nuclear labels)
    <src>/tissuenet_v1.1_test.npz    (other keys, e.g. `meta`, are ignored)

The files' own train/val/test splits are kept. Whole-cell labels are the target
(`--label-channel` picks the other one). Arrays are streamed from the `.npz` one image at
a time, so the multi-GB training file never sits in memory whole.

    python -m data_prep.tissuenet --src tissuenet_v1.1.zip --out data   # then data=tissuenet
"""

from __future__ import annotations

import argparse
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_prep.cli import run_converter
from data_prep.common import DatasetInfo, DatasetLayoutError, SourceSample, layout_error

INFO = DatasetInfo(
    name="tissuenet",
    source="https://datasets.deepcell.org/data (TissueNet v1.1)",
    licence="Modified Apache 2.0, non-commercial (DeepCell datasets licence)",
    layout="tissuenet_v1.1_{train,val,test}.npz with arrays X [N,H,W,2] and y [N,H,W,2]",
)
LABEL_CHANNELS = {"whole_cell": 0, "nuclear": 1}
_SPLIT_RE = re.compile(r"(train|val|test)\.npz$", re.IGNORECASE)


def iter_npz_array(npz: Path, key: str) -> Iterator[np.ndarray]:
    """Yield `npz[key][i]` for i = 0..N-1, reading the member sequentially (low memory)."""
    with zipfile.ZipFile(npz) as zf:
        member = f"{key}.npy"
        if member not in zf.namelist():
            keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            raise DatasetLayoutError(f"{npz}: expected an array '{key}', found arrays {keys}")
        with zf.open(member) as fp:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
            if fortran or dtype.hasobject or len(shape) < 3:
                raise DatasetLayoutError(f"{npz}: '{key}' must be a C-order numeric [N, H, W, ...] "
                                         f"array, got shape {shape}")
            item = int(np.prod(shape[1:])) * dtype.itemsize
            for _ in range(shape[0]):
                buf = fp.read(item)
                if len(buf) != item:
                    raise DatasetLayoutError(f"{npz}: '{key}' is truncated")
                yield np.frombuffer(buf, dtype=dtype).reshape(shape[1:])


def find_npz(root: Path) -> list[tuple[str, Path]]:
    """`(split, path)` of the split files under `root` (or `root` itself if it is one)."""
    files = [root] if root.is_file() else sorted(root.rglob("*.npz"))
    found = []
    for f in files:
        m = _SPLIT_RE.search(f.name)
        if m:
            found.append((m.group(1).lower(), f))
    if not found:
        raise layout_error(root, "tissuenet_v1.1_{train,val,test}.npz files")
    splits = [s for s, _ in found]
    if len(set(splits)) != len(splits):
        raise layout_error(root, "one .npz per split, found several for one split")
    return sorted(found, key=lambda t: ("train", "val", "test").index(t[0]))


def iter_samples(root: Path, args: argparse.Namespace, with_labels: bool) -> Iterator[SourceSample]:
    channel = LABEL_CHANNELS[args.label_channel]
    for split, npz in find_npz(root):
        ys = iter_npz_array(npz, "y") if with_labels else None
        for i, x in enumerate(iter_npz_array(npz, "X")):
            if x.ndim != 3 or x.shape[-1] < 2:
                raise DatasetLayoutError(f"{npz}: X items must be [H, W, 2], got {x.shape}")
            label = None
            if ys is not None:
                y = next(ys, None)
                if y is None or y.shape[:2] != x.shape[:2]:
                    raise DatasetLayoutError(f"{npz}: y does not match X at item {i}")
                label = np.asarray(y[..., channel] if y.ndim == 3 else y, dtype=np.int64)
            name = f"{split}_{i:05d}"
            yield SourceSample(name, name, split, x, label)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label-channel", choices=sorted(LABEL_CHANNELS), default="whole_cell",
                   help="which labels to keep (y channel 0 whole-cell, 1 nuclear)")


def main(argv: list[str] | None = None) -> int:
    return run_converter(
        INFO, iter_samples, argv, converter="data_prep.tissuenet", doc=__doc__,
        channel_map={"nuclear": 0, "whole_cell": 1}, add_arguments=add_arguments,
        extra_settings=lambda a: {"label_channel": a.label_channel},
    )


if __name__ == "__main__":
    raise SystemExit(main())
