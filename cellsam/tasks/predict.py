"""`predict(cfg)`: segment image files with a trained checkpoint.

`python predict.py ckpt=<checkpoint> input=<file, folder or glob> output=<folder>` writes,
for each image `<name>.<ext>`: `<name>.tif` (label image, uint16 or uint32), `<name>.csv`
(one row per cell: id, area, centroid, bounding box, score, predicted IoU) and, with
`overlay=true`, `<name>_overlay.png` (cell outlines on the image). A file that cannot be
read or segmented is logged by name and skipped; the number of such files is returned
(the entry point exits non-zero when it is not 0).

Output names are the inputs' stems; a run whose inputs share a stem, or whose outputs would
overwrite one of its inputs, is refused before anything is written. Each file is written
under a temporary name and renamed when complete.

Settings: `resolve_settings` (cellsam/inference/settings.py): the preset, then the
checkpoint's inference block, then the config's `inference` block (`inference=release`,
`inference.<key>=...`).
"""

from __future__ import annotations

import csv
import glob
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from cellsam.data.io import IMAGE_SUFFIXES, read_image
from cellsam.inference.predictor import CellSAMPredictor, Prediction
from cellsam.utils.atomic import atomic_path

log = logging.getLogger(__name__)

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


def output_paths(out_dir: Path, name: str, overlay: bool) -> list[Path]:
    """What one input writes: `<name>.tif`, `<name>.csv` (and `<name>_overlay.png`)."""
    paths = [out_dir / f"{name}.tif", out_dir / f"{name}.csv"]
    return [*paths, out_dir / f"{name}_overlay.png"] if overlay else paths


def plan_outputs(files: list[Path], out_dir: Path, overlay: bool) -> dict[Path, str]:
    """Each input's output name (its stem), checked before anything is written: two inputs
    with one stem (`a.png`, `a.tif`) would overwrite each other's results, and an output
    that is one of the run's inputs would destroy it. Raises `ValueError` naming them."""
    by_stem: dict[str, list[Path]] = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(path)
    clashes = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if clashes:
        listed = "; ".join(", ".join(str(p) for p in paths) for paths in clashes.values())
        raise ValueError(f"inputs with the same name would overwrite each other's results: "
                         f"{listed}; rename them or predict them into separate folders")
    inputs = {p.resolve() for p in files}
    hit = [str(out) for path in files for out in output_paths(out_dir, path.stem, overlay)
           if out.resolve() in inputs]
    if hit:
        raise ValueError(f"output={out_dir}: the results would overwrite input files "
                         f"({', '.join(hit)}); choose another output folder")
    return {path: path.stem for path in files}


def write_outputs(out_dir: Path, name: str, result: Prediction, prepared: np.ndarray | None
                  ) -> None:
    """Write one input's results, each file under a temporary name renamed when complete,
    so an interrupted run never leaves a truncated file under a final name."""
    import tifffile

    tif, table, *overlay = output_paths(out_dir, name, prepared is not None)
    with atomic_path(tif) as tmp:
        tifffile.imwrite(tmp, result.labels, compression="zlib")
    with atomic_path(table) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(cell_table(result))
    if overlay:
        import imageio.v3 as iio

        with atomic_path(overlay[0]) as tmp:
            iio.imwrite(tmp, overlay_image(prepared, result.labels))


def predict_file(predictor: CellSAMPredictor, path: Path, out_dir: Path, name: str,
                 channels: Any, channel_axis: int | None, overlay: bool) -> int:
    """Segment one file and write its results; returns the cell count. Warnings (a blank
    image) are logged with the file's name, once per file."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_image(path)
        prepared = predictor.prepare(image, channels, channel_axis)
        result = predictor.predict_prepared(prepared)
    for w in caught:
        log.warning("%s: %s", path, w.message)
    write_outputs(out_dir, name, result, prepared if overlay else None)
    return result.num_cells


def predict(cfg: DictConfig) -> int:
    """Segment every input image; returns the number of files that failed.

    Every check that concerns the whole run (output names, the checkpoint) happens before
    anything is written; then any error on one input is logged with its name and the run
    goes on to the next.
    """
    files = collect_inputs(str(cfg.input))
    out_dir = Path(cfg.output).expanduser()
    overlay = bool(cfg.get("overlay"))
    names = plan_outputs(files, out_dir, overlay)
    block = OmegaConf.to_container(cfg.inference, resolve=True) if cfg.get("inference") else {}
    from cellsam.inference.sac_predictor import predictor_from_checkpoint

    predictor = predictor_from_checkpoint(  # CellSAM or SAC, as the checkpoint's stage says
        cfg.ckpt, device=cfg.get("device", "auto"), bf16=bool(cfg.get("bf16", False)),
        config=block)
    channels = cfg.get("channels")
    channels = OmegaConf.to_container(channels) if isinstance(channels, DictConfig) else channels
    channel_axis = cfg.get("channel_axis")
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("predicting %d image(s) with %s on %s -> %s", len(files), cfg.ckpt,
             predictor.device, out_dir)
    failed: list[str] = []
    bar = tqdm(files, desc="predict", unit="image")
    for path in bar:
        try:
            cells = predict_file(predictor, path, out_dir, names[path], channels, channel_axis,
                                 overlay)
        except Exception as err:  # one bad input never stops the others; its name is logged
            log.error("%s: %s: %s; skipped", path, type(err).__name__, err)
            failed.append(str(path))
            continue
        bar.set_postfix(cells=cells)
    done = len(files) - len(failed)
    if failed:
        log.error("%d of %d file(s) failed: %s", len(failed), len(files), ", ".join(failed))
    log.info("predicted %d of %d file(s) into %s", done, len(files), out_dir)
    return len(failed)
