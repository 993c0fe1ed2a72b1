"""Score a folder of predicted label images, any tool's output, with every metric.

    python eval.py pred_dir=<predictions> gt_dir=<ground-truth label images>
    python eval.py pred_dir=<predictions> data=dsb2018 split=test

writes into the run folder the same `results.{json,csv,md,png}`, `results_per_image.csv`
and `results_iou.png` as a checkpoint's evaluation.

Matching. A label image (`.tif`, `.tiff`, `.png`, `.npy`, ...; `cellsam.data.io`) is named by
its path relative to its folder without the suffix: `pred_dir/a/b.tif` is `a/b`. Against
`gt_dir` the names must be the same on both sides; against a dataset split, a prediction
is named like the split's image (`coco.json` `file_name`, e.g. `test/img_0001`), and with
several datasets it sits in a subfolder per dataset (`pred_dir/<dataset>/<name>.tif`).
Hidden files and predict.py's `*_overlay.png` are not label images and are skipped.

Refusals. Every prediction must match a ground-truth image and every ground-truth image
must have a prediction; each file must be readable, a 2-D label image of non-negative
integers (floats only when every value is an integer) and have the ground truth's shape.
Problems are collected over all files and raised together in one `FolderScoringError`
naming every file; nothing is written then, so no result covers a silent subset.

Predicted label images carry no scores: for COCO every predicted cell scores 1 (its AP
then ranks tied detections in image and id order).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cellsam.data.format import open_split, read_manifest
from cellsam.data.io import LABEL_SUFFIXES, ImageReadError, read_label
from cellsam.metrics.bootstrap import bootstrap_settings
from cellsam.metrics.report import (
    add_intervals,
    image_record,
    markdown_table,
    results_title,
    summarize,
    write_results,
)

__all__ = ["FolderScoringError", "GroundTruth", "label_files", "score_folder"]

log = logging.getLogger(__name__)
_SHOWN = 20  # names listed per problem before "... and N more"


class FolderScoringError(ValueError):
    """Predictions that cannot all be scored; the message names every file concerned."""


@dataclass
class GroundTruth:
    """The true label images of one dataset: names in order, a loader and, per image, the
    text that names it in messages."""

    dataset: str
    names: list[str]
    load: Callable[[int], np.ndarray]
    where: Callable[[int], str]


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f", ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def label_files(folder: str | Path, what: str) -> dict[str, Path]:
    """Label images under `folder` (recursively) by name: the relative path without its
    suffix. Raises `FolderScoringError` for a missing or empty folder, or two files with
    one name (`a.tif`, `a.png`: which one is the prediction?)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FolderScoringError(f"{what}={folder}: not a folder")
    found: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if (not path.is_file() or any(p.startswith(".") for p in rel.parts)
                or path.suffix.lower() not in LABEL_SUFFIXES
                or path.name.endswith("_overlay.png")):
            continue
        found.setdefault(rel.with_suffix("").as_posix(), []).append(path)
    clashes = [" and ".join(str(p) for p in ps) for ps in found.values() if len(ps) > 1]
    if clashes:
        raise FolderScoringError(f"{what}={folder}: {len(clashes)} name(s) with several files, "
                                 f"keep one of each: {_listing(clashes)}")
    if not found:
        raise FolderScoringError(f"{what}={folder}: no label images "
                                 f"({', '.join(LABEL_SUFFIXES)}) in it")
    return {name: paths[0] for name, paths in found.items()}


def folder_truth(gt_dir: str | Path, name: str | None = None) -> GroundTruth:
    """Ground truth from a folder of label images (dataset name: `name`, else the folder's
    name, or its parent's when the folder is called `labels` / `masks`)."""
    files = label_files(gt_dir, "gt_dir")
    root = Path(gt_dir).expanduser().resolve()
    default = root.parent.name if root.name.lower() in ("labels", "masks") else root.name
    paths = list(files.values())
    return GroundTruth(str(name or default), list(files), lambda i: read_label(paths[i]),
                       lambda i: str(paths[i]))


def split_truths(data_cfg: Mapping[str, Any], split: str, skip_missing_split: bool = False
                 ) -> tuple[list[GroundTruth], list[str]]:
    """Ground truth of `split` of each dataset of a `conf/data` block, and the datasets
    without that split (refused unless `skip_missing_split`, as in checkpoint evaluation)."""
    datasets = dict(data_cfg.get("datasets") or {})
    if not datasets:
        raise ValueError("data.datasets is empty: choose data=<name>, or give gt_dir=<folder>")
    truths, missing = [], {}
    for ds_name, entry in datasets.items():
        path = Path(entry["path"])
        if entry.get("generate"):  # synthetic data is generated on first use
            from cellsam.data.synthetic import ensure_synthetic

            gen = dict(entry["generate"])
            gen["cells"] = tuple(gen.get("cells", (8, 48)))
            ensure_synthetic(path, **gen)
        splits = sorted(read_manifest(path).get("splits", {}))
        if split not in splits:
            missing[ds_name] = (path, splits)
            continue
        data = open_split(path, split, validate=bool(data_cfg.get("validate_on_open", True)))
        names = {int(im["id"]): str(im["file_name"]) for im in data.coco["images"]}
        order = [names.get(i, str(i)) for i in range(len(data))]
        labels = data.labels
        truths.append(GroundTruth(
            str(ds_name), order, lambda i, lab=labels: np.asarray(lab[i, 0], np.int64),
            lambda i, p=path, o=order: f"{p}/{split}/labels.npy item {i} ({o[i]})"))
    if missing and (not truths or not skip_missing_split):
        listed = "; ".join(f"{n} ({p}) has {s or 'none'}" for n, (p, s) in missing.items())
        raise ValueError(f"split={split!r} is missing from {len(missing)} of {len(datasets)} "
                         f"dataset(s): {listed}. Choose another split"
                         + ("" if not truths else ", or skip_missing_split=true to score "
                            "the others and list these as not scored"))
    return truths, list(missing)


def match_names(pred: Mapping[str, Path], truths: Sequence[GroundTruth], pred_dir: str | Path
                ) -> list[list[Path]]:
    """Each ground-truth image's prediction file (per dataset, in order); raises
    `FolderScoringError` naming the images without a prediction and the predictions
    without an image."""
    prefix = len(truths) > 1  # several datasets: one subfolder each
    wanted = [[f"{t.dataset}/{n}" if prefix else n for n in t.names] for t in truths]
    expected = {k for keys in wanted for k in keys}
    missing = [k for keys in wanted for k in keys if k not in pred]
    extra = [str(pred[k]) for k in pred if k not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} ground-truth image(s) have no prediction in "
                        f"{pred_dir} (looked for <name>{{{','.join(LABEL_SUFFIXES)}}}): "
                        f"{_listing(missing)}")
    if extra:
        where = "dataset subfolder" if prefix else "ground-truth name"
        problems.append(f"{len(extra)} prediction(s) match no {where}: {_listing(extra)}"
                        + (f" (datasets: {', '.join(t.dataset for t in truths)})"
                           if prefix else ""))
    if problems:
        raise FolderScoringError("cannot score the predictions, nothing was scored:\n  - "
                                 + "\n  - ".join(problems))
    return [[pred[k] for k in keys] for keys in wanted]


def _read_pair(pred_path: Path, truth: GroundTruth, i: int
               ) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
    """Both label images of one pair, or the problems that stop it being scored."""
    problems: list[str] = []
    pred = gt = None
    try:
        pred = read_label(pred_path)
        if pred.ndim != 2:
            problems.append(f"{pred_path}: a label image must be 2-D [H, W], got shape "
                            f"{pred.shape} (colour-coded labels and stacks are not scored)")
    except ImageReadError as err:  # names the file: unreadable, float, negative, ...
        problems.append(str(err))
    try:
        gt = truth.load(i)
    except ImageReadError as err:
        problems.append(str(err))
    if gt is not None and gt.ndim != 2:
        problems.append(f"{truth.where(i)}: ground truth must be 2-D [H, W], got {gt.shape}")
    if not problems and pred.shape != gt.shape:
        problems.append(f"{pred_path}: shape {pred.shape} differs from the ground truth's "
                        f"{gt.shape} ({truth.where(i)})")
    return (None, None, problems) if problems else (pred, gt, [])


def score_folder(
    pred_dir: str | Path,
    output_dir: str | Path,
    gt_dir: str | Path | None = None,
    data_cfg: Mapping[str, Any] | None = None,
    split: str = "test",
    gt_name: str | None = None,
    coco: bool = True,
    compare_with_paper: bool = True,
    variant: str = "auto",
    skip_missing_split: bool = False,
    bootstrap: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score every label image of `pred_dir` against `gt_dir` or `split` of the datasets of
    `data_cfg`, and write the results files into `output_dir`.

    Returns:
        `{dataset: {metric: value, ci, iou_curve}, ..., "all": {...}, "meta": {...}}` as in
        results.json. Raises `FolderScoringError` (nothing written) when any prediction
        cannot be scored.
    """
    start = time.perf_counter()
    if (gt_dir is None) == (data_cfg is None):
        raise ValueError("give the ground truth as exactly one of gt_dir or data_cfg")
    missing: list[str] = []
    if gt_dir is not None:
        truths = [folder_truth(gt_dir, gt_name)]
    else:
        truths, missing = split_truths(data_cfg, split, skip_missing_split)
    files = match_names(label_files(pred_dir, "pred_dir"), truths, pred_dir)
    total = sum(len(t.names) for t in truths)
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    bar = tqdm(total=total, desc="score", unit="image")
    for truth, paths in zip(truths, files):
        for i, path in enumerate(paths):
            pred, gt, bad = _read_pair(path, truth, i)
            problems += bad
            if not bad and not problems:  # after a problem only the checks go on
                records.append(image_record(truth.dataset, i, gt, pred, None, coco,
                                            name=truth.names[i]))
            bar.update()
    bar.close()
    if problems:
        shown = problems[:50] + ([f"... and {len(problems) - 50} more"] if len(problems) > 50
                                 else [])
        raise FolderScoringError(f"{len(problems)} problem(s) in {total} image pairs, nothing "
                                 "was scored:\n  - " + "\n  - ".join(shown))
    boot = bootstrap_settings(bootstrap)
    order = [t.dataset for t in truths]
    results = add_intervals(summarize(records, coco=coco, order=order), records, boot["n"],
                            boot["seed"], boot["level"])
    chosen = "generalist" if variant == "auto" else variant  # no checkpoint to say otherwise
    meta = {
        "mode": "folder", "predictions": str(pred_dir),
        "ground_truth": str(gt_dir) if gt_dir is not None else "+".join(order),
        "datasets": order, "scores": "none: every predicted cell scores 1 for COCO",
        "seconds": round(time.perf_counter() - start, 2), "missing_split": missing,
        "bootstrap": boot,
    }
    if gt_dir is None:
        meta["split"] = split
    paths = write_results(output_dir, results, meta, chosen, compare_with_paper, records)
    print(markdown_table(results, chosen, compare_with_paper, results_title(meta), boot),
          flush=True)
    log.info("scored %d images in %.1f s; results written to %s", total,
             meta["seconds"], paths["json"])
    return {**results, "meta": {**meta, "paper_variant": chosen}}
