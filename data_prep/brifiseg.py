"""BriFiSeg: brightfield nuclei of four cell lines (Mathieu et al., arXiv 2211.03072).

Source: https://zenodo.org/records/7195636 (`1channel.tar`: one nnU-Net task per cell line,
as zips). Licence: as stated on the Zenodo record (the BriFiSeg code repository is
Apache-2.0); check it before redistributing converted data.

Expected layout (the tar, or the folder it extracts to; zips inside are extracted)::

    <src>/.../Task<nnn>_<name>/imagesTr/<case>_0000.nii.gz   brightfield image
    <src>/.../Task<nnn>_<name>/labelsTr/<case>.nii.gz        semantic labels
    <src>/.../Task<nnn>_<name>/imagesTs/...   labelsTs/...   (the test split)

Labels are semantic: 0 background, 1 nucleus centre, 2 nucleus border. Instances (our
rule, documented in data_prep/README.md): the connected components (8-connectivity) of
the centre class are the seeds; every foreground pixel (centre or border) joins a seed by
a flat watershed inside the foreground mask (geodesic nearest seed), so each instance is
one connected piece; foreground islands without a centre are dropped and counted
(`islands_without_centre`). The image (nuclear-only data) goes to the whole-cell slot.
The publisher's Tr/Ts split is kept; val is 10% of the train cases (seeded).

NIfTI-1 files are read by a small built-in reader (no extra dependency): the array comes
back in SimpleITK's (C-order) axis order, which is how nnU-Net writes 2-D images.

    python -m data_prep.brifiseg --src 1channel.tar --out data     # then data=brifiseg
"""

from __future__ import annotations

import argparse
import gzip
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from skimage.measure import label as connected_label
from skimage.segmentation import watershed

from data_prep.cli import run_converter
from data_prep.common import DatasetInfo, DatasetLayoutError, SourceSample, layout_error

INFO = DatasetInfo(
    name="brifiseg",
    source="https://zenodo.org/records/7195636 (1channel.tar)",
    licence="see Zenodo record 7195636 (BriFiSeg repository: Apache-2.0)",
    layout="Task*/imagesTr/<case>_0000.nii.gz, Task*/labelsTr/<case>.nii.gz "
    "(and imagesTs/, labelsTs/)",
)
SPLIT_DIRS = {"Tr": "train", "Ts": "test"}
_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2",
                 768: "u4", 1024: "i8", 1280: "u8"}


def read_nifti(path: Path) -> np.ndarray:
    """Read a NIfTI-1 `.nii` / `.nii.gz` -> array in C order (`[..., z, y, x]`), squeezed."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    for endian in "<>":
        if struct.unpack(endian + "i", raw[:4])[0] == 348:
            break
    else:
        raise DatasetLayoutError(f"{path}: not a NIfTI-1 file")
    dims = struct.unpack(endian + "8h", raw[40:56])
    datatype = struct.unpack(endian + "h", raw[70:72])[0]
    vox_offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    slope, inter = struct.unpack(endian + "2f", raw[112:120])
    if datatype not in _NIFTI_DTYPES or not 1 <= dims[0] <= 7:
        raise DatasetLayoutError(f"{path}: unsupported NIfTI datatype {datatype} or dims {dims}")
    shape = tuple(int(d) for d in dims[1 : 1 + dims[0]])
    dtype = np.dtype(endian + _NIFTI_DTYPES[datatype])
    count = int(np.prod(shape))
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=vox_offset)
    arr = data.reshape(shape[::-1])  # NIfTI stores x fastest
    if slope not in (0.0, 1.0) or inter != 0.0:
        arr = arr * slope + inter
    return np.squeeze(arr)


def semantic_to_instances(semantic: np.ndarray, centre: int = 1) -> tuple[np.ndarray, int]:
    """Instance labels `[H, W]` from centre/border semantic labels, and the dropped islands."""
    fg = semantic > 0
    seeds = connected_label(semantic == centre, connectivity=2)
    inst = watershed(np.zeros(semantic.shape, np.float32), markers=seeds, mask=fg,
                     connectivity=2)
    islands = connected_label(fg & (inst == 0), connectivity=2).max()
    return inst.astype(np.int64), int(islands)


def find_cases(root: Path) -> list[tuple[str, str, Path, Path]]:
    """`(split, "<task>/<case>", image, label)` for every case of every task under `root`."""
    out = []
    tasks = sorted({p.parent for p in root.rglob("imagesT[rs]") if p.is_dir()})
    for task in tasks:
        for tag, split in SPLIT_DIRS.items():
            images, labels = task / f"images{tag}", task / f"labels{tag}"
            if not images.is_dir():
                continue
            for img in sorted(images.glob("*.nii*")):
                case = img.name.split(".nii")[0].rsplit("_", 1)[0]
                lab = next(iter(sorted(labels.glob(f"{case}.nii*"))), None)
                if lab is None:
                    raise layout_error(labels, f"a label {case}.nii.gz for {img.name}")
                out.append((split, f"{task.name}/{case}", img, lab))
    if not out:
        raise layout_error(root, "Task*/imagesTr/ and labelsTr/ (nnU-Net layout) with .nii.gz")
    return out


def iter_samples(root: Path, args: argparse.Namespace, with_labels: bool) -> Iterator[SourceSample]:
    for split, case, img_path, lab_path in find_cases(root):
        image = read_nifti(img_path)
        label, counts = None, {}
        if with_labels:
            label, islands = semantic_to_instances(read_nifti(lab_path), args.centre_value)
            counts = {"islands_without_centre": islands}
        yield SourceSample(case, case, split, image, label, counts=counts)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--centre-value", type=int, default=1,
                   help="semantic value of nucleus centres (seeds); default 1")


def main(argv: list[str] | None = None) -> int:
    return run_converter(
        INFO, iter_samples, argv, converter="data_prep.brifiseg", doc=__doc__,
        add_arguments=add_arguments, nested_archives=True,
        extra_settings=lambda a: {"centre_value": a.centre_value,
                                  "instances": "centre components + flat watershed in foreground"},
    )


if __name__ == "__main__":
    raise SystemExit(main())
