"""`evaluate(cfg)`: a trained checkpoint on one or several datasets' test (or val) split.

`python eval.py ckpt=<checkpoint> data=<dataset or [a,b,...]> split=test` writes into its
run folder `results.json` (per dataset and `all`: the keys of
`cellsam.metrics.report.SCHEMA_KEYS`, bootstrap intervals `ci` and the IoU curves),
`results.csv`, `results.md` (our numbers beside the paper's per-image mean F1@0.5),
`results.png`, `results_per_image.csv` (every metric of every image) and
`results_iou.png`, and prints the Markdown tables.

`python eval.py pred_dir=<folder> gt_dir=<folder>` (or `pred_dir=<folder> data=... split=...`)
scores another tool's label images instead and writes the same files
(`cellsam.tasks.score_folder`).

Dataset images are stored already normalised to [0, 1] (percentile clip / CLAHE done by the
converter), so they go straight into the model (`CellSAMPredictor.predict_batch`), resized
to the model input exactly as during training; predictions come back at the labels'
resolution. Inference settings: the config's `inference` block (`inference=release`,
`inference.box_threshold=0.3`, ...). `train.py ... evaluate_after=true` calls
`evaluate_checkpoint` with the training config.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from cellsam.data.format import read_manifest
from cellsam.metrics.bootstrap import bootstrap_settings
from cellsam.metrics.report import (
    add_intervals,
    markdown_table,
    results_title,
    summarize,
    write_results,
)

if TYPE_CHECKING:
    from cellsam.inference.predictor import CellSAMPredictor

log = logging.getLogger(__name__)


def paper_variant(meta: dict[str, Any], requested: str = "auto") -> str:
    """Which paper models to compare with: `auto` -> `generalist` when the checkpoint was
    trained on several datasets, `specialist` on one."""
    if requested != "auto":
        return requested
    datasets = meta.get("datasets") or (meta.get("config", {}).get("data", {}) or {}).get(
        "datasets", {})
    return "specialist" if len(datasets) == 1 else "generalist"


def dataset_splits(path: str | Path) -> list[str]:
    """The splits a dataset folder's manifest lists."""
    return sorted(read_manifest(Path(path)).get("splits", {}))


def load_predictor(ckpt_path: str | Path, inference: dict[str, Any] | None,
                   device: str = "auto", bf16: bool = False
                   ) -> tuple[CellSAMPredictor, dict[str, Any]]:
    """Predictor with `resolve_settings` of the checkpoint's and the config's inference
    blocks, and the checkpoint's metadata."""
    # Imported here: scoring a folder of label images (`pred_dir=`) needs no torch/Lightning
    # (0.9 s of imports instead of 8 s).
    from cellsam.inference.predictor import resolve_device
    from cellsam.inference.sac_predictor import predictor_from_checkpoint

    # CellSAM or SAC, as the checkpoint's stage says
    predictor = predictor_from_checkpoint(ckpt_path, device=resolve_device(device), bf16=bf16,
                                          config=inference)
    return predictor, predictor.checkpoint_meta


def run_evaluation(
    ckpt_path: str | Path,
    data_cfg: DictConfig,
    inference: dict[str, Any] | None,
    output_dir: str | Path,
    split: str = "test",
    device: str = "auto",
    batch_size: int = 4,
    coco: bool = True,
    compare_with_paper: bool = True,
    variant: str = "auto",
    max_images: int | None = None,
    bf16: bool = False,
    skip_missing_split: bool = False,
    bootstrap: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Predict every image of `split` of the configured datasets and write `results.*`.

    Args:
        data_cfg: a `conf/data/*` block (`CellDataModule` config).
        inference: an `inference` config block as a dict.
        max_images: at most this many images per dataset (None: all), for quick checks.
        skip_missing_split: score the datasets that have `split` and list the others in
            the results as not scored (default: refuse, naming each and its splits).
        bootstrap: `{n, seed, level}` of the intervals (default 2000 resamples, seed 0, 95 %).

    Returns:
        `{dataset: {metric: value}, ..., "all": {...}, "meta": {...}}` as in results.json.
    """
    import torch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from cellsam.callbacks.segmentation_metrics import batch_records
    from cellsam.data.datamodule import collate

    start = time.perf_counter()
    predictor, meta = load_predictor(ckpt_path, inference, device, bf16)
    dm = instantiate(data_cfg, input_size=predictor.model.image_size, batch_size=batch_size,
                     _convert_="all")
    dm.prepare_data()  # synthetic data is generated on first use
    datasets = dm.split_datasets(split)
    missing = {name: dataset_splits(entry["path"]) for name, entry in dm.datasets.items()
               if name not in datasets}
    if missing and (not datasets or not skip_missing_split):
        listed = "; ".join(f"{name} ({dm.datasets[name]['path']}) has {splits or 'none'}"
                           for name, splits in missing.items())
        raise ValueError(f"split={split!r} is missing from {len(missing)} of {len(dm.names)} "
                         f"dataset(s): {listed}. Choose another split"
                         + ("" if not datasets else ", or skip_missing_split=true to score "
                            "the others and list these as not scored"))
    if missing:
        log.warning("not scored (no %s split): %s", split, ", ".join(missing))
    n_total = sum(min(len(d), max_images or len(d)) for d in datasets.values())
    log.info("evaluating %s on %s (%d images, split=%s) on %s", ckpt_path,
             ", ".join(datasets), n_total, split, predictor.device)
    records: list[dict[str, Any]] = []
    bar = tqdm(total=n_total, desc=f"eval {split}", unit="image")
    for name, ds in datasets.items():
        if max_images:
            ds = torch.utils.data.Subset(ds, range(min(len(ds), int(max_images))))
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate,
                            num_workers=dm.num_workers)
        bar.set_postfix(dataset=name)
        for batch in loader:
            records.extend(batch_records(predictor, batch, with_coco=coco))
            bar.update(len(batch["index"]))
    bar.close()
    # The callback's record order, sorted locally: no `gather_records` here, since
    # `evaluate_after` runs on rank 0 alone while a DDP process group may still exist (a
    # collective would wait forever for the other ranks).
    records.sort(key=lambda r: (r["dataset"], r["index"]))
    names = {name: image_names(ds.data.coco) for name, ds in datasets.items()}
    for r in records:  # the split's image names, for results_per_image.csv
        r["name"] = names[r["dataset"]].get(r["index"], str(r["index"]))
    boot = bootstrap_settings(bootstrap)
    results: dict[str, Any] = add_intervals(
        summarize(records, coco=coco, order=list(datasets)), records, boot["n"], boot["seed"],
        boot["level"])
    chosen = paper_variant(meta, variant)
    run_meta = {
        "checkpoint": str(ckpt_path), "split": split, "stage": meta.get("stage"),
        "trained_on": meta.get("datasets"), "datasets": list(datasets),
        "inference_preset": predictor.settings.preset,
        "inference_changes": predictor.settings.changed_from_preset(),
        "inference": predictor.settings.to_dict(), "device": str(predictor.device),
        "max_images": max_images, "seconds": round(time.perf_counter() - start, 2),
        "missing_split": list(missing), "bootstrap": boot,
    }
    paths = write_results(output_dir, results, run_meta, chosen, compare_with_paper, records)
    table = markdown_table(results, chosen, compare_with_paper, results_title(run_meta), boot)
    print(table, flush=True)
    log.info("results written to %s", paths["json"])
    return {**results, "meta": {**run_meta, "paper_variant": chosen}}


def image_names(coco: dict[str, Any]) -> dict[int, str]:
    """Split index -> the image's name (`coco.json` `file_name`, as the converter wrote it)."""
    return {int(im["id"]): str(im.get("file_name", im["id"])) for im in coco.get("images", [])}


def _inference_block(cfg: DictConfig) -> dict[str, Any]:
    block = cfg.get("inference")
    return OmegaConf.to_container(block, resolve=True) if block is not None else {}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """`eval.py`: `cfg.ckpt`, `cfg.data`, `cfg.split`, `cfg.inference`, `cfg.device`,
    `cfg.batch_size`, `cfg.coco`, `cfg.compare_with_paper` (optional: `paper_variant`
    auto|generalist|specialist, `max_images`, `bf16`, `bootstrap`). With `cfg.pred_dir`
    instead of `cfg.ckpt`: score that folder's label images against `cfg.gt_dir` (or
    `cfg.data` / `cfg.split`). Writes into `cfg.paths.output_dir`."""
    from cellsam.utils.run_info import finish_run_info, write_run_info

    pred_dir, gt_dir = cfg.get("pred_dir"), cfg.get("gt_dir")
    has_ckpt = not OmegaConf.is_missing(cfg, "ckpt") and cfg.get("ckpt") is not None
    if pred_dir and has_ckpt:
        raise ValueError("give either ckpt=<checkpoint> (evaluate a model) or "
                         "pred_dir=<folder> (score label images), not both")
    if gt_dir and not pred_dir:
        raise ValueError("gt_dir=... is the ground truth for pred_dir=<folder of predicted "
                         "label images>; give pred_dir too")
    if not pred_dir and not has_ckpt:
        raise ValueError("ckpt=<checkpoint> is required to evaluate a model; to score label "
                         "images another tool wrote, give pred_dir=<folder> with "
                         "gt_dir=<folder> or data=<dataset> split=<split>")
    if pred_dir and cfg.get("max_images"):
        raise ValueError("max_images does not apply to pred_dir=...: every prediction is scored")
    block = cfg.get("bootstrap")
    bootstrap = OmegaConf.to_container(block, resolve=True) if block is not None else None
    output_dir = Path(cfg.paths.output_dir)
    write_run_info(output_dir, cfg)
    common = dict(split=cfg.get("split", "test"), coco=bool(cfg.get("coco", True)),
                  compare_with_paper=bool(cfg.get("compare_with_paper", True)),
                  variant=str(cfg.get("paper_variant", "auto")),
                  skip_missing_split=bool(cfg.get("skip_missing_split", False)),
                  bootstrap=bootstrap)
    if pred_dir:
        from cellsam.tasks.score_folder import score_folder

        results = score_folder(pred_dir, output_dir, gt_dir=gt_dir,
                               data_cfg=None if gt_dir else cfg.data,
                               gt_name=cfg.get("gt_name"), **common)
    else:
        results = run_evaluation(
            cfg.ckpt, cfg.data, _inference_block(cfg), output_dir,
            device=str(cfg.get("device", "auto")), batch_size=int(cfg.get("batch_size", 4)),
            max_images=cfg.get("max_images"), bf16=bool(cfg.get("bf16", False)), **common)
    finish_run_info(output_dir, {"results": str(output_dir / "results.json")})
    return results


def evaluate_checkpoint(ckpt_path: str | Path, cfg: DictConfig, output_dir: str | Path,
                        split: str = "test") -> dict[str, Any]:
    """`train.py ... evaluate_after=true`: evaluate the best checkpoint with the training
    config's data and inference blocks (batch size from `data.batch_size`)."""
    return run_evaluation(
        ckpt_path, cfg.data, _inference_block(cfg), output_dir, split=split,
        device=str(cfg.get("device", "auto")),
        batch_size=int(cfg.get("eval_batch_size") or cfg.data.get("batch_size", 4)),
        coco=bool(cfg.get("eval_coco", True)),
        compare_with_paper=bool(cfg.get("compare_with_paper", True)),
        variant=str(cfg.get("paper_variant", "auto")),
    )
