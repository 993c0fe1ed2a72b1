"""Reading images and label images from files: the one reader of the package, data_prep
and predict.py. Every failure is an `ImageReadError` naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "LABEL_SUFFIXES", "TIFF_SUFFIXES", "ImageReadError", "read_image",
           "read_label"]

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (*TIFF_SUFFIXES, ".png", ".jpg", ".jpeg", ".bmp")
LABEL_SUFFIXES = (*IMAGE_SUFFIXES, ".npy")


class ImageReadError(ValueError):
    """A file is missing, empty, unreadable or holds no usable image or label image."""


def _load(path: Path, suffixes: tuple[str, ...]) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise ImageReadError(f"{path}: unsupported file type {path.suffix!r} "
                             f"(use {', '.join(suffixes)})")
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix in TIFF_SUFFIXES:
            import tifffile

            arr = tifffile.imread(path)
        else:
            import imageio.v3 as iio

            arr = iio.imread(path)
    except Exception as err:  # each decoder fails in its own way on bad bytes
        raise ImageReadError(f"{path}: not a readable {suffix[1:].upper()} file "
                             f"({type(err).__name__}: {str(err).splitlines()[0][:200]})"
                             ) from err
    arr = np.asarray(arr)
    if arr.size == 0:
        raise ImageReadError(f"{path}: the image is empty (shape {arr.shape})")
    while arr.ndim > 2 and arr.shape[0] == 1:  # leading singleton axes
        arr = arr[0]
    if arr.ndim < 2:
        raise ImageReadError(f"{path}: {arr.ndim}-D data (shape {arr.shape}) is not an image")
    return arr


def read_image(path: str | Path) -> np.ndarray:
    """TIFF (tifffile), PNG/JPEG/BMP (imageio): `[H, W]`, `[H, W, C]`, `[C, H, W]` or a
    stack, as stored (leading singleton axes removed, a PNG alpha channel dropped)."""
    path = Path(path)
    arr = _load(path, IMAGE_SUFFIXES)
    if arr.dtype.kind not in "biuf":
        raise ImageReadError(f"{path}: image dtype {arr.dtype} is not numeric")
    if path.suffix.lower() not in TIFF_SUFFIXES and arr.ndim == 3 and arr.shape[-1] in (2, 4):
        arr = arr[..., :-1]  # grey + alpha or RGBA
    return arr


def read_label(path: str | Path) -> np.ndarray:
    """An instance label image `[H, W]` (or stack `[T, H, W]`) as int64, from TIFF, PNG or
    `.npy`; a float image with integer values is cast; other values are refused."""
    path = Path(path)
    arr = _load(path, LABEL_SUFFIXES)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise ImageReadError(f"{path}: label image has non-integer values")
        if np.abs(arr).max() >= 2**63:
            raise ImageReadError(f"{path}: label values too large for int64")
    elif arr.dtype.kind not in "biu":
        raise ImageReadError(f"{path}: label dtype {arr.dtype} is not an integer type")
    if arr.dtype == np.uint64 and arr.max() >= 2**63:
        raise ImageReadError(f"{path}: label values too large for int64")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ImageReadError(f"{path}: label image has negative values")
    return arr
