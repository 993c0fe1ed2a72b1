"""Every converter on a small fixture in its dataset's real layout, built from ../shared/data.

Each test re-packs a few real images (DSB nuclei, BriFiSeg A549, bacteria phase frames)
the way the publisher ships its dataset, runs `python -m data_prep.<name>` in-process, and
checks the written dataset: validation and checksums, images per split, object counts,
that no source image (group) is in two splits.
"""

from __future__ import annotations

import gzip
import importlib
import json
import shutil
import struct
import tarfile
import zipfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from pycocotools import mask as mask_utils
from scipy import ndimage
from skimage.measure import find_contours

from cellsam.data.format import open_split, verify_checksums

shared = pytest.mark.shared_data
ROOT = Path(__file__).resolve().parents[2]
DATASETS = ["tissuenet", "deepbacs", "brifiseg", "cellpose", "omnipose", "yeastnet", "yeaz",
            "dsb2018", "phase400"]
DSB_GREY = [  # 256x256 grey fluorescence images of dsb2018_fixed
    "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552",
    "003cee89357d9fe13516167fd67b609a164651b21934585648c740d2c3d86dc1",
]


def convert(module: str, src: Path, out: Path, *extra: str, name: str | None = None) -> dict:
    """Run a converter's main(); check the result opens, validates and matches its checksums."""
    mod = importlib.import_module(f"data_prep.{module}")
    rc = mod.main(["--src", str(src), "--out", str(out), "--no-clahe", "--quiet", *extra])
    assert rc == 0
    name = name or mod.INFO.name
    manifest = json.loads((out / name / "manifest.json").read_text())
    verify_checksums(out / name)
    for split in manifest["splits"]:
        open_split(out / name, split, validate=True)
    groups = [set(v["sources"]) for v in manifest["splits"].values()]
    for i, a in enumerate(groups):  # no source image (group) in two splits
        for b in groups[i + 1 :]:
            assert not a & b
    return manifest


def n_images(manifest: dict) -> dict[str, int]:
    return {s: v["n_images"] for s, v in manifest["splits"].items()}


def n_objects(manifest: dict) -> int:
    return sum(v["n_objects"] for v in manifest["splits"].values())


def dsb(shared: Path, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (uint8 grey) and label of the k-th grey 256x256 DSB image."""
    folder = shared / "dsb2018_fixed"
    return (iio.imread(folder / "images" / f"{DSB_GREY[k]}.png"),
            tifffile.imread(folder / "labels" / f"{DSB_GREY[k]}.tif").astype(np.int32))


def removed_by_filter(label: np.ndarray) -> int:
    """Objects the paper's filter removes, counted independently of cellsam.preprocess."""
    n = 0
    for i, sl in enumerate(ndimage.find_objects(label), start=1):
        if sl is None:
            continue
        pieces = ndimage.label(label[sl] == i, structure=np.ones((3, 3)))[1]
        n += pieces > 1 or sl[0].stop - sl[0].start == 1 or sl[1].stop - sl[1].start == 1
    return n


@shared
def test_dsb2018_kaggle_layout_as_shipped(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "dsb2018_kaggle_layout"
    m = convert("dsb2018", src, tmp_path / "a")
    assert m["filtering"]["source_images"] == 10
    assert {s: len(v["sources"]) for s, v in m["splits"].items()} == {"train": 8, "val": 1,
                                                                       "test": 1}
    # images that fit one tile keep every nucleus the filter does not remove
    for split in m["splits"]:
        coco = open_split(tmp_path / "a/dsb2018", split).coco
        per_image = {im["id"]: im["file_name"] for im in coco["images"]}
        counts = {n: 0 for n in per_image.values()}
        for ann in coco["annotations"]:
            counts[per_image[ann["image_id"]]] += 1
        for name, count in counts.items():
            if "_y" in name:
                continue
            masks = sorted((src / "stage1_train" / name / "masks").glob("*.png"))
            label = np.zeros(iio.imread(masks[0]).shape, np.int32)
            for i, p in enumerate(masks, start=1):
                label[iio.imread(p) > 0] = i
            assert count == len(masks) - removed_by_filter(label), name
    # the zip as downloaded, converted with 2 workers: identical bytes
    zpath = tmp_path / "stage1_train.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted((src / "stage1_train").rglob("*.png")):
            zf.write(f, f.relative_to(src / "stage1_train").as_posix())
    m2 = convert("dsb2018", zpath, tmp_path / "b", "--workers", "2")
    assert m2 == m
    assert convert("dsb2018", src, tmp_path / "a") == m  # converting again replaces, same bytes
    assert (tmp_path / "a/dsb2018/manifest.json").read_bytes() == \
        (tmp_path / "b/dsb2018/manifest.json").read_bytes()


@shared
def test_layout_errors_say_what_was_expected(shared_data: Path, tmp_path: Path, capsys) -> None:
    from data_prep import cellpose, dsb2018

    assert dsb2018.main(["--src", str(shared_data / "brifiseg_a549"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "DatasetLayoutError" in err and "expected stage1_train/<id>/" in err
    assert "found: ['images/', 'labels/', 'meta.json']" in err
    (tmp_path / "cp" / "train").mkdir(parents=True)
    assert cellpose.main(["--src", str(tmp_path / "cp"), "--out", str(tmp_path / "o")]) == 2
    assert "expected train/ and test/ folders with *_img.png" in capsys.readouterr().err


@shared
def test_tissuenet_npz(shared_data: Path, tmp_path: Path) -> None:
    (img0, lab0), (img1, lab1) = dsb(shared_data, 0), dsb(shared_data, 1)
    src = tmp_path / "tissuenet_v1.1"
    src.mkdir()
    # distinct images in each split (identical ones would be duplicates, sent to train)
    for split, pairs in {"train": [(img0, lab0), (img1, lab1)], "val": [(img1[::-1], lab1[::-1])],
                         "test": [(img0[:, ::-1], lab0[:, ::-1])]}.items():
        X = np.stack([np.stack([im, im // 2 + 1], -1) for im, _ in pairs]).astype(np.float32)
        y = np.stack([np.stack([lb, (lb == 1).astype(np.int32)], -1) for _, lb in pairs])
        np.savez_compressed(src / f"tissuenet_v1.1_{split}.npz", X=X, y=y)
    shutil.make_archive(str(tmp_path / "tissuenet_v1.1"), "zip", src)  # the zip as distributed
    m = convert("tissuenet", tmp_path / "tissuenet_v1.1.zip", tmp_path / "out")
    assert n_images(m) == {"train": 2, "val": 1, "test": 1}
    kept = [n - removed_by_filter(lb) for n, lb in
            ((lab0.max(), lab0), (lab1.max(), lab1))]
    assert n_objects(m) == 2 * kept[0] + 2 * kept[1]
    data = open_split(tmp_path / "out/tissuenet", "train")
    assert data.images[:, 1].max() > 0 and data.images[:, 2].max() > 0  # nuclear + whole-cell
    m_nuc = convert("tissuenet", src, tmp_path / "nuc", "--label-channel", "nuclear")
    assert n_objects(m_nuc) == 4 and m_nuc["settings"]["label_channel"] == "nuclear"


@shared
def test_cellpose_png_pairs(shared_data: Path, tmp_path: Path) -> None:
    (img0, lab0), (img1, lab1) = dsb(shared_data, 0), dsb(shared_data, 1)
    src = tmp_path / "cellpose"
    for split, items in {"train": [(img0, lab0), (img1, lab1), (img1[::-1], lab1[::-1])],
                         "test": [(img0[:, ::-1], lab0[:, ::-1])]}.items():
        (src / split).mkdir(parents=True)
        for i, (im, lb) in enumerate(items):
            rgb = np.stack([im, (im.astype(np.uint16) * 3 // 4).astype(np.uint8), 0 * im], -1)
            iio.imwrite(src / split / f"{i:03d}_img.png", rgb)
            iio.imwrite(src / split / f"{i:03d}_masks.png", lb.astype(np.uint16))
    iio.imwrite(src / "test" / "001_img.png", img1)  # a grey image
    iio.imwrite(src / "test" / "001_masks.png", lab1.astype(np.uint16))
    m = convert("cellpose", src, tmp_path / "out")
    assert n_images(m) == {"train": 2, "val": 1, "test": 2}
    test = open_split(tmp_path / "out/cellpose", "test")
    assert test.images[0, 1].max() > 0 and test.images[1, 1].max() == 0  # RGB vs grey image
    assert m["settings"]["channel_map"] == {"nuclear": 0, "whole_cell": 1}


def _coco_polygon(mask: np.ndarray) -> list[list[float]]:
    contour = max(find_contours(np.pad(mask, 1).astype(float), 0.5), key=len) - 1
    return [[float(v) for yx in contour for v in (yx[1], yx[0])]]


@shared
def test_livecell_coco_json(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "LIVECell_dataset_2021"
    img_dir = src / "images/livecell_test_images/A172"
    img_dir.mkdir(parents=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
    n_ann = 0
    for k in range(2):
        im, lb = dsb(shared_data, k)
        tifffile.imwrite(img_dir / f"A172_Phase_C7_1_00d0{k}h00m_1.tif", im)
        coco["images"].append({"id": k + 10, "file_name": f"A172_Phase_C7_1_00d0{k}h00m_1.tif",
                               "height": 256, "width": 256})
        for obj in range(1, lb.max() + 1):
            m = lb == obj
            if obj % 2:  # LIVECell's polygons for odd objects, compressed RLE for even ones
                seg = _coco_polygon(m)
            else:
                seg = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                seg["counts"] = seg["counts"].decode()
            n_ann += 1
            coco["annotations"].append({"id": n_ann, "image_id": k + 10, "category_id": 1,
                                        "segmentation": seg, "area": int(m.sum()), "iscrowd": 0})
    dup = dict(coco["annotations"][0], id=n_ann + 1)  # a duplicate outline of one cell
    coco["annotations"].append(dup)
    coco["annotations"] = {str(a["id"]): a for a in coco["annotations"]}  # as LIVECell ships it
    (src / "annotations/LIVECell").mkdir(parents=True)
    (src / "annotations/LIVECell/livecell_coco_test.json").write_text(json.dumps(coco))
    m = convert("livecell", src, tmp_path / "out")
    assert list(m["splits"]) == ["test"] and n_images(m) == {"test": 2}  # 256 x2 = one tile
    f = m["filtering"]
    assert f["overlap_dropped"] == 1 and m["settings"]["scale"] == 2.0
    removed = f["overlap_dropped"] + f["disjoint_labels"] + f["thin_labels"]
    assert n_objects(m) == n_ann + 1 - removed


def _write_nifti(path: Path, arr: np.ndarray) -> None:
    """Minimal NIfTI-1 writer (2-D image stored as x, y, 1 like nnU-Net) for the fixture."""
    codes = {np.dtype(np.uint16): 512, np.dtype(np.uint8): 2, np.dtype(np.float32): 16}
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, arr.shape[1], arr.shape[0], 1, 1, 1, 1, 1)
    struct.pack_into("<2h", hdr, 70, codes[arr.dtype], arr.dtype.itemsize * 8)
    struct.pack_into("<8f", hdr, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<3f", hdr, 108, 352.0, 0.0, 0.0)
    hdr[344:348] = b"n+1\0"
    path.write_bytes(gzip.compress(bytes(hdr) + np.ascontiguousarray(arr).tobytes(), mtime=0))


@shared
def test_brifiseg_nnunet_tar_of_zips(shared_data: Path, tmp_path: Path) -> None:
    bri = shared_data / "brifiseg_a549"
    task = tmp_path / "build/Task001_A549"
    for i in range(1, 6):
        tag = "Tr" if i <= 3 else "Ts"
        for kind in ("images", "labels"):
            (task / f"{kind}{tag}").mkdir(parents=True, exist_ok=True)
        _write_nifti(task / f"images{tag}/A549_00{i}_0000.nii.gz",
                     tifffile.imread(bri / f"images/A549_00{i}.tif"))
        _write_nifti(task / f"labels{tag}/A549_00{i}.nii.gz",
                     tifffile.imread(bri / f"labels/A549_00{i}_semantic_center1_border2.tif"))
    zpath = shutil.make_archive(str(tmp_path / "build/Task001_A549"), "zip", tmp_path / "build",
                                "Task001_A549")
    with tarfile.open(tmp_path / "1channel.tar", "w") as tf:
        tf.add(zpath, arcname="1channel/Task001_A549.zip")
    m = convert("brifiseg", tmp_path / "1channel.tar", tmp_path / "out")
    assert n_images(m) == {"train": 2, "val": 1, "test": 2}
    assert n_objects(m) == 85  # one instance per centre component, as in the shared labels
    assert m["filtering"]["disjoint_labels"] == 0
    labels = open_split(tmp_path / "out/brifiseg", "test").labels
    ref = tifffile.imread(bri / "labels/A549_004.tif")
    agree = ((labels[0, 0] > 0) == (ref > 0)).mean()
    assert agree > 0.999 and labels[0, 0].max() == ref.max() == 23


def _phase(shared: Path, k: int, crop: bool = True) -> tuple[np.ndarray, np.ndarray]:
    im = tifffile.imread(shared / f"bacteria_phase/images/t{k:03d}.tif")
    lb = tifffile.imread(shared / f"bacteria_phase/labels/t{k:03d}.tif")
    return (im[200:500, 300:700], lb[200:500, 300:700]) if crop else (im, lb)


@shared
def test_deepbacs_species_folders_and_tiling(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "deepbacs"
    for split, ks in {"training": [17, 18, 19], "test": [16]}.items():
        for kind in ("source", "target"):
            (src / "s_aureus" / split / kind).mkdir(parents=True)
        for k in ks:
            im, lb = _phase(shared_data, k, crop=False)
            tifffile.imwrite(src / "s_aureus" / split / "source" / f"img{k}.tif", im)
            tifffile.imwrite(src / "s_aureus" / split / "target" / f"img{k}.tif", lb)
    m = convert("deepbacs", src, tmp_path / "out")
    assert m["filtering"]["tiles_total"] == 4 * 6  # 727x1026: rows 0, 215; cols 0, 384, 514
    assert {s: len(v["sources"]) for s, v in m["splits"].items()} == {"train": 2, "val": 1,
                                                                       "test": 1}
    assert all("_y" in im["file_name"] for im in
               open_split(tmp_path / "out/deepbacs", "test").coco["images"])


@shared
def test_omnipose_modalities_share_groups(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "omnipose"
    for modality in ("bact_phase", "bact_fluor"):
        for split, ks in {"train_sorted": [14, 15, 16], "test_sorted": [17]}.items():
            d = src / modality / split / "ecoli"
            d.mkdir(parents=True)
            for k in ks:
                im, lb = _phase(shared_data, k)
                im = im if modality == "bact_phase" else im.max() - im
                tifffile.imwrite(d / f"t{k}.tif", im)
                tifffile.imwrite(d / f"t{k}_masks.tif", lb)
                tifffile.imwrite(d / f"t{k}_flows.tif", np.zeros((3, *lb.shape), np.float32))
    m = convert("omnipose", src, tmp_path / "out")
    assert n_images(m) == {"train": 4, "val": 2, "test": 2}
    for split in m["splits"]:  # each field's phase and fluorescence twins share the split
        names = {im["file_name"] for im in open_split(tmp_path / "out/omnipose", split)
                 .coco["images"]}
        assert {n.replace("bact_fluor", "bact_phase") for n in names} == \
            {n for n in names if n.startswith("bact_phase")}


@shared
def test_yeastnet_and_yeaz(shared_data: Path, tmp_path: Path) -> None:
    sets = tmp_path / "yeastnet/Datasets/DSDataset"
    (sets / "Images").mkdir(parents=True)
    (sets / "Masks").mkdir()
    for k in range(3):
        im, lb = _phase(shared_data, 14 + k)
        tifffile.imwrite(sets / "Images" / f"im{k:03d}.tif", im)
        np.save(sets / "Masks" / f"mask{k:03d}.npy", (lb > 0) if k == 0 else lb)
    m = convert("yeastnet", tmp_path / "yeastnet", tmp_path / "out")
    assert n_images(m) == {"train": 1, "val": 1, "test": 1}
    bf = tmp_path / "yeaz_build/gold-standard-BF-V-1"
    phc = tmp_path / "yeaz_build/gold-standard-PhC-plus-2"
    bf.mkdir(parents=True)
    phc.mkdir()
    for k in range(3):
        im, lb = _phase(shared_data, 10 + k)
        tifffile.imwrite(bf / f"bf{k}_im.tif", im)
        tifffile.imwrite(bf / f"bf{k}_mask.tif", lb)
    stack = [_phase(shared_data, k) for k in (18, 19)]
    tifffile.imwrite(phc / "colony_im.tif", np.stack([s[0] for s in stack]))
    tifffile.imwrite(phc / "colony_mask.tif", np.stack([s[1] for s in stack]))
    with tarfile.open(tmp_path / "yeaz.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "yeaz_build", arcname=".")
    m = convert("yeaz", tmp_path / "yeaz.tar.gz", tmp_path / "out")
    assert m["filtering"]["source_images"] == 5 and sum(n_images(m).values()) == 5
    split_of = {im["file_name"]: s for s in m["splits"] for im in
                open_split(tmp_path / "out/yeaz", s).coco["images"]}
    frames = [s for n, s in split_of.items() if "colony" in n]
    assert len(frames) == 2 and len(set(frames)) == 1  # both frames of the stack together


@shared
def test_pairs_group_regex_and_data_config(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "pairs"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    for i, k in enumerate(range(14, 20)):  # 3 positions x 2 frames
        im, lb = _phase(shared_data, k)
        tifffile.imwrite(src / "images" / f"pos{i // 2}_t{i % 2}.tif", im)
        tifffile.imwrite(src / "labels" / f"pos{i // 2}_t{i % 2}_masks.tif", lb)
    m = convert("pairs", src, tmp_path / "out", "--name", "phase400", "--label-suffix", "_masks",
                "--group-regex", r"^(pos\d+)_", name="phase400")
    assert n_images(m) == {"train": 2, "val": 2, "test": 2}
    assert all(len(v["sources"]) == 1 for v in m["splits"].values())
    # data=phase400 composes to a DataModule that loads the converted data
    from hydra.utils import instantiate

    cfg = compose_data("phase400", tmp_path / "conf", tmp_path / "out")
    dm = instantiate(cfg.data, num_workers=0, input_size=256, _convert_="partial")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 3, 256, 256) and batch["labels"].shape == (2, 512, 512)
    assert len(dm.val_dataloader()) == 1 and batch["dataset"] == ["phase400"] * 2


@shared
def test_pairs_on_a_shared_folder_as_it_is(shared_data: Path, tmp_path: Path) -> None:
    m = convert("pairs", shared_data / "brifiseg_a549", tmp_path, "--name", "a549", name="a549")
    assert m["filtering"]["source_images"] == 5  # the *_semantic_* label files are not images
    assert n_objects(m) + m["filtering"]["disjoint_labels"] == 85


def compose_data(name: str, conf_dir: Path, data_dir: Path):
    """Compose `data=<name>` from the repository's conf/data with a minimal primary config."""
    from hydra import compose, initialize_config_dir

    conf_dir.mkdir(parents=True, exist_ok=True)
    if not (conf_dir / "data").exists():
        (conf_dir / "data").symlink_to(ROOT / "conf" / "data")
    (conf_dir / "primary.yaml").write_text(
        "defaults:\n  - data: synthetic\n  - _self_\n"
        f"paths:\n  data_dir: {data_dir}\n  cache_dir: {data_dir}/.cache\n"
    )
    with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
        return compose("primary", overrides=[f"data={name}"])


def test_data_configs_per_dataset_and_generalist(tmp_path: Path) -> None:
    gen = compose_data("generalist", tmp_path, Path("/data"))
    assert list(gen.data.datasets) == DATASETS
    for name in [*DATASETS, "livecell"]:
        cfg = compose_data(name, tmp_path, Path("/data"))
        assert list(cfg.data.datasets) == [name]
        assert cfg.data.datasets[name].path == f"/data/{name}"
        assert cfg.data._target_ == gen.data._target_ and cfg.data.batch_size == gen.data.batch_size
        module = "pairs" if name == "phase400" else name  # Phase400: the generic converter
        if module != "pairs":
            assert importlib.import_module(f"data_prep.{module}").INFO.name == name
        assert gen.data.datasets.get(name, cfg.data.datasets[name]) == cfg.data.datasets[name]
    livecell = compose_data("livecell", tmp_path, Path("/data")).data.datasets.livecell
    assert livecell.splits == ["test"]
