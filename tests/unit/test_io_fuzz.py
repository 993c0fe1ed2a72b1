"""The image and label readers on random bytes and random arrays: every input either loads
or raises `ImageReadError` naming the file, never another exception."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellsam.data.io import ImageReadError, read_image, read_label

SUFFIXES = [".tif", ".png", ".jpg", ".bmp", ".npy", ".txt"]
DTYPES = ["uint8", "uint16", "int32", "int64", "float32", "float64", "bool", "complex64"]
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _read_both(path):
    for reader in (read_image, read_label):
        try:
            out = reader(path)
        except ImageReadError as err:
            assert str(path) in str(err)
            continue
        assert isinstance(out, np.ndarray) and out.ndim >= 2
        if reader is read_label:
            assert out.dtype == np.int64 and out.min() >= 0


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes(tmp_path, data, suffix):
    path = tmp_path / f"x{suffix}"
    path.write_bytes(data)
    _read_both(path)


@FUZZ
@given(shape=st.lists(st.integers(0, 9), min_size=0, max_size=4),
       dtype=st.sampled_from(DTYPES), fmt=st.sampled_from([".tif", ".png", ".npy"]),
       seed=st.integers(0, 2**16))
def test_random_arrays(tmp_path, shape, dtype, fmt, seed):
    rng = np.random.default_rng(seed)
    arr = (rng.standard_normal(shape) * 1000).astype(dtype)
    path = tmp_path / f"a{fmt}"
    try:
        if fmt == ".npy":
            np.save(path, arr)
        elif fmt == ".png":
            iio.imwrite(path, arr)
        else:
            tifffile.imwrite(path, arr)
    except Exception:  # a writer refusing the array is not what is tested here
        return
    _read_both(path)


def test_named_messages(tmp_path):
    empty = tmp_path / "blank.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"blank\.png: empty file \(0 bytes\)"):
        read_image(empty)
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    with pytest.raises(ImageReadError, match=r"bad\.tif: not a readable TIF file"):
        read_image(bad)
    neg = tmp_path / "neg.npy"
    np.save(neg, np.full((4, 4), -1, np.int16))
    with pytest.raises(ImageReadError, match=r"neg\.npy: label image has negative values"):
        read_label(neg)
    with pytest.raises(ImageReadError, match=r"missing\.tif: no such file"):
        read_image(tmp_path / "missing.tif")
