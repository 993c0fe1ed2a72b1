"""`predict(cfg)`: segment image files with a trained checkpoint.

`python predict.py ckpt=<checkpoint> input=<file, folder or glob> output=<folder>` writes,
for each image `<name>.<ext>`: `<name>.tif` (label image, uint16 or uint32), `<name>.csv`
(one row per cell: id, area, centroid, bounding box, score, predicted IoU) and, with
`overlay=true`, `<name>_overlay.png` (cell outlines on the image). A file that cannot be
read or segmented is logged by name and skipped; the number of such files is returned
(the entry point exits non-zero when it is not 0).

Settings: on the command line the config's `inference` block decides (preset `paper` by
default, `inference=release`, any `inference.<key>=...`); from Python,
`CellSAMPredictor.from_checkpoint` uses the settings saved in the checkpoint instead.
"""

from __future__ import annotations

import csv
import glob
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from cellsam.inference.predictor import CellSAMPredictor, Prediction

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def collect_inputs(spec: str) -> list[Path]:
    """Image files named by a file, a folder (its images, sorted) or a glob pattern.

    A named file is returned even with an unknown suffix, so that it is reported as
    unreadable rather than silently ignored. Raises `FileNotFoundError` when nothing matches.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        raise FileNotFoundError(f"input={spec!r}: no image files found (file, folder or glob)")
    return files


def read_image(path: Path) -> np.ndarray:
    """TIFF via tifffile, PNG/JPEG via imageio; raises on anything unreadable."""
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    if suffix in (".png", ".jpg", ".jpeg"):
        import imageio.v3 as iio

        return np.asarray(iio.imread(path))
    raise ValueError(f"unsupported file type {path.suffix!r} (use {', '.join(IMAGE_SUFFIXES)})")


def cell_table(result: Prediction) -> list[dict[str, Any]]:
    """One row per cell of a prediction: id, area, centroid (y, x), bbox (x0, y0, x1, y1;
    x1/y1 exclusive), box score and SAM's predicted IoU."""
    labels = result.labels
    n = result.num_cells
    if n == 0:
        return []
    flat = labels.ravel().astype(np.int64)
    area = np.bincount(flat, minlength=n + 1)[1:]
    ys, xs = np.indices(labels.shape)
    cy = np.bincount(flat, weights=ys.ravel(), minlength=n + 1)[1:] / np.maximum(area, 1)
    cx = np.bincount(flat, weights=xs.ravel(), minlength=n + 1)[1:] / np.maximum(area, 1)
    rows = []
    for k in range(n):
        x0, y0, x1, y1 = (int(v) for v in result.boxes[k])
        rows.append({"id": k + 1, "area": int(area[k]), "centroid_y": round(float(cy[k]), 2),
                     "centroid_x": round(float(cx[k]), 2), "bbox_x0": x0, "bbox_y0": y0,
                     "bbox_x1": x1, "bbox_y1": y1, "score": round(float(result.scores[k]), 4),
                     "predicted_iou": round(float(result.iou[k]), 4)})
    return rows


CSV_FIELDS = ["id", "area", "centroid_y", "centroid_x", "bbox_x0", "bbox_y0", "bbox_x1",
              "bbox_y1", "score", "predicted_iou"]


def overlay_image(prepared: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB uint8 `[H, W, 3]`: the prepared image in grey (brightest channel) with cell
    outlines in yellow."""
    from skimage.segmentation import find_boundaries

    grey = (np.clip(prepared.max(axis=0), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[find_boundaries(labels, mode="inner")] = (255, 220, 0)
    return rgb


def write_outputs(out_dir: Path, name: str, result: Prediction, prepared: np.ndarray | None
                  ) -> None:
    import tifffile

    tifffile.imwrite(out_dir / f"{name}.tif", result.labels, compression="zlib")
    with open(out_dir / f"{name}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(cell_table(result))
    if prepared is not None:
        import imageio.v3 as iio

        iio.imwrite(out_dir / f"{name}_overlay.png", overlay_image(prepared, result.labels))


def predict(cfg: DictConfig) -> int:
    """Segment every input image; returns the number of files that failed."""
    files = collect_inputs(str(cfg.input))
    out_dir = Path(cfg.output).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = OmegaConf.to_container(cfg.inference, resolve=True) if cfg.get("inference") else {}
    preset = overrides.pop("preset", None)
    predictor = CellSAMPredictor.from_checkpoint(
        cfg.ckpt, device=cfg.get("device", "auto"), preset=preset,
        bf16=bool(cfg.get("bf16", False)), **overrides)
    channels = cfg.get("channels")
    channels = OmegaConf.to_container(channels) if isinstance(channels, DictConfig) else channels
    log.info("predicting %d image(s) with %s on %s -> %s", len(files), cfg.ckpt,
             predictor.device, out_dir)
    failed: list[str] = []
    bar = tqdm(files, desc="predict", unit="image")
    for path in bar:
        name = path.stem
        if (out_dir / f"{name}.tif").resolve() == path.resolve():
            log.error("%s: output would overwrite the input; choose another output folder", path)
            failed.append(str(path))
            continue
        try:
            image = read_image(path)
        except Exception as err:  # corrupt files raise many types; report and go on
            log.error("%s: cannot read the image (%s); skipped", path, err)
            failed.append(str(path))
            continue
        try:
            prepared = predictor.prepare(image, channels)
            result = predictor.predict_prepared(prepared)
            write_outputs(out_dir, name, result, prepared if cfg.get("overlay") else None)
        except ValueError as err:  # bad shape, NaN, bad channel map: the message says which
            log.error("%s: %s; skipped", path, err)
            failed.append(str(path))
            continue
        bar.set_postfix(cells=result.num_cells)
    if failed:
        log.error("%d of %d file(s) failed: %s", len(failed), len(files), ", ".join(failed))
    return len(failed)
