"""Cellpose peer: a Cellpose 3.x CNN trained from scratch on our converted train split.

Runs in the peer's own venv (experiments/peers/cellpose/.venv, see setup.sh); cellsam is not
imported here. Reads `<data>/<split>/images.npy` / `labels.npy` (our format) with numpy,
trains within a wall-time budget, predicts every test tile and writes

    <out>/pred/<file_name>.tif   one label TIFF per test tile, named like the split's image in
                                 its coco.json, which is how `python eval.py pred_dir=...
                                 data=<name> split=test` matches predictions to ground truth
    <out>/run.json               timings, epochs, versions, settings
    <out>/models/cellpose_scratch the trained weights (cellpose's state-dict file)
    <out>/train.log              cellpose's training log

    .venv/bin/python run.py --data data/dsb2018_fixed --out outputs/peers/cellpose \\
        --budget-min 60 --threads 1 --seed 0

Training (see README.md): weights are randomly initialised (`pretrained_model=False`,
`model_type=None`) and every cellpose routine that could fetch a model file is replaced by
one that raises, so nothing is downloaded. Images are used at their native scale
(`rescale=False`), the model's `diam_mean` is the train split's median nucleus diameter and
prediction uses that same diameter, i.e. rescale factor 1. The budget is met by planning:
a few probe batches measure the cost of a training and a validation batch, then ONE
`cellpose.train.train_seg` call gets the number of epochs (and, when the budget allows fewer
than `--min-epochs` full passes, the number of images per epoch) that fits the remaining
time, so cellpose's learning-rate schedule (10-epoch warm-up, constant, halving steps at the
end) runs once, as designed.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

from budget import plan  # this folder's planner (the script's folder is on sys.path)

CHANNEL_NAMES = ("blank", "nuclear", "whole_cell")
MODEL_NAME = "cellpose_scratch"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="converted dataset folder (manifest.json, "
                   "<split>/images.npy, labels.npy, coco.json)")
    p.add_argument("--out", required=True, help="output folder (pred/, run.json, models/)")
    p.add_argument("--budget-min", type=float, required=True,
                   help="wall minutes for the whole training phase (data preparation, flows, "
                        "probe and the epochs)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch, OpenMP, numba)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val", help="cellpose's test_data (loss monitoring "
                   "only); '' for none")
    p.add_argument("--test-split", default="test")
    p.add_argument("--max-train", type=int, default=0,
                   help="train on a seeded random subset of this many tiles (0: all)")
    p.add_argument("--max-test", type=int, default=0,
                   help="smoke tests only: predict the first N test tiles (eval.py refuses a "
                        "partial split)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=0.005, help="AdamW (train_seg default)")
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--min-epochs", type=int, default=110,
                   help="below this many full passes, epochs are shortened (nimg_per_epoch) so "
                        "that the schedule still has this many epochs; >100 keeps cellpose's "
                        "final halving steps")
    p.add_argument("--max-epochs", type=int, default=2000)
    p.add_argument("--scale-range", type=float, default=None,
                   help="train_seg scale augmentation (None: cellpose's choice, 1.0 with "
                        "rescale=False, i.e. resize by 0.5..1.5)")
    p.add_argument("--probe-batches", type=int, default=2,
                   help="timed training batches after one warm-up (and half as many "
                        "validation batches)")
    p.add_argument("--safety", type=float, default=0.95,
                   help="fraction of the remaining budget that the planned epochs may fill")
    p.add_argument("--flow-threshold", type=float, default=0.4)
    p.add_argument("--cellprob-threshold", type=float, default=0.0)
    p.add_argument("--min-size", type=int, default=15)
    return p.parse_args(argv)


def limit_threads(n: int) -> None:
    """Before numpy / torch / numba are imported: their thread pools read these."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(n)


def forbid_downloads() -> None:
    """Replace every cellpose routine that resolves or fetches a model file."""
    import cellpose.models
    import cellpose.utils

    def refuse(*args, **kwargs):
        raise RuntimeError(f"cellpose tried to fetch a model file {args}: this peer trains "
                           "from scratch and downloads nothing")

    for mod, name in ((cellpose.models, "model_path"), (cellpose.models, "size_model_path"),
                      (cellpose.models, "cache_model_path"),
                      (cellpose.utils, "download_url_to_file")):
        if hasattr(mod, name):
            setattr(mod, name, refuse)


def used_channels(images, chunk: int = 32) -> list[int]:
    """Indices of the channels that are not zero everywhere in the split."""
    nz = [False] * images.shape[1]
    for s in range(0, len(images), chunk):
        block = images[s:s + chunk]
        for c in range(len(nz)):
            nz[c] = nz[c] or bool((block[:, c] != 0).any())
        if all(nz):
            break
    return [c for c, v in enumerate(nz) if v]


def layout(channels: list[int], names: list[str]) -> list[int | None]:
    """Our channels -> cellpose's two input channels (segmentation channel, optional nuclear
    channel). One stain: [it, zeros], as cellpose's channels=[0,0] (grayscale). Nuclear and
    whole-cell: [whole_cell, nuclear], as cellpose's cyto + nuclei."""
    named = {names[c]: c for c in channels}
    stains = [c for c in channels if names[c] != "blank"]
    if len(stains) == 1:
        return [stains[0], None]
    if len(stains) == 2 and {"nuclear", "whole_cell"} <= set(named):
        return [named["whole_cell"], named["nuclear"]]
    raise ValueError(f"cannot map non-zero channels {[names[c] for c in channels]} onto "
                     "cellpose's two input channels")


def to_cellpose(img, lay, np):
    """[C,H,W] float image -> [2,H,W] float32 (missing second channel: zeros)."""
    out = np.zeros((2, *img.shape[1:]), np.float32)
    for k, c in enumerate(lay):
        if c is not None:
            out[k] = img[c]
    return out


def probe(net, data, flows, bs: int, n: int, scale_range: float, device, torch, np, train):
    """Seconds per training batch and per validation (forward-only) batch, measured on a copy
    of the network (the real one keeps its initial weights)."""
    from cellpose import transforms

    net = copy.deepcopy(net)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-6)
    rng = np.random.default_rng(12345)

    def batch():
        inds = rng.choice(len(data), size=min(bs, len(data)), replace=False)
        imgs = [data[i] for i in inds]
        lbls = [flows[i][1:] for i in inds]
        return transforms.random_rotate_and_resize(
            imgs, Y=lbls, rescale=np.ones(len(imgs), "float32"), scale_range=scale_range,
            xy=(224, 224))[:2]

    def step(grad: bool) -> float:
        tic = time.perf_counter()
        imgi, lbl = batch()
        x = torch.from_numpy(imgi).to(device)
        if grad:
            net.train()
            loss = train._loss_fn_seg(lbl, net(x)[0], device)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            net.eval()
            with torch.no_grad():
                train._loss_fn_seg(lbl, net(x)[0], device).item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - tic

    step(True)  # warm-up (allocations, kernels)
    t_train = float(np.median([step(True) for _ in range(max(1, n))]))
    t_eval = float(np.median([step(False) for _ in range(max(1, n // 2))]))
    return t_train, t_eval


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limit_threads(args.threads)
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    # cellpose keeps user models here; an empty folder of ours, not ~/.cellpose
    os.environ.setdefault("CELLPOSE_LOCAL_MODELS_PATH", str(out / "cellpose_home"))

    import importlib.metadata as md

    import numpy as np
    import tifffile
    import torch

    torch.set_num_threads(args.threads)
    from cellpose import dynamics, models, train, transforms

    forbid_downloads()
    cp_version = md.version("cellpose")
    if not cp_version.startswith("3."):
        raise SystemExit(f"cellpose {cp_version}: this peer is the 3.x CNN; see requirements.txt")

    log_file = out / "train.log"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout),
                                  logging.FileHandler(log_file, mode="w")], force=True)
    log = logging.getLogger("cellpose_peer")

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    # cellpose's augmentations draw from numpy's global generator (train_seg reseeds it with
    # the epoch number); torch's seed fixes the random initial weights
    np.random.seed(args.seed)  # noqa: NPY002
    torch.manual_seed(args.seed)

    data_dir = Path(args.data).expanduser().resolve()
    manifest = json.loads((data_dir / "manifest.json").read_text())
    names = list(manifest.get("channels", CHANNEL_NAMES))

    def split(name: str):
        d = data_dir / name
        return (np.load(d / "images.npy", mmap_mode="r"), np.load(d / "labels.npy", mmap_mode="r"),
                json.loads((d / "coco.json").read_text()))

    # ---------------------------------------------------------------- training phase
    t0 = time.perf_counter()
    tr_img, tr_lab, _ = split(args.train_split)
    channels = used_channels(tr_img)
    lay = layout(channels, names)
    log.info("non-zero channels of %s: %s -> cellpose inputs %s", args.train_split,
             [names[c] for c in channels], [names[c] if c is not None else "zeros" for c in lay])
    n_all = len(tr_img)
    idx = np.arange(n_all)
    if args.max_train and args.max_train < n_all:
        idx = np.sort(np.random.default_rng(args.seed).choice(n_all, args.max_train,
                                                              replace=False))

    def prepared(images, labels, which):
        xs, ys = [], []
        for i in which:
            x = to_cellpose(np.asarray(images[i]), lay, np)
            xs.append(transforms.normalize_img(x, axis=0))  # as eval does (1st-99th pct.)
            ys.append(np.array(labels[i, 0], dtype=np.int32))
        return xs, ys

    train_x, train_y = prepared(tr_img, tr_lab, idx)
    areas = np.concatenate([np.bincount(y.ravel())[1:] for y in train_y])
    areas = areas[areas > 0]
    diam = float(np.median(np.sqrt(areas)) / (np.sqrt(np.pi) / 2))
    n_masks = np.array([len(np.unique(y)) - (1 if (y == 0).any() else 0) for y in train_y])
    t_prep = time.perf_counter() - t0
    tic = time.perf_counter()
    train_flows = dynamics.labels_to_flows(train_y, device=device)
    del train_y
    val_x = val_flows = None
    if args.val_split:
        va_img, va_lab, _ = split(args.val_split)
        val_x, val_y = prepared(va_img, va_lab, range(len(va_img)))
        val_flows = dynamics.labels_to_flows(val_y, device=device)
        del val_y
    t_flows = time.perf_counter() - tic
    log.info("train tiles %d (of %d), %d nuclei, median diameter %.2f px; prep %.1f s, "
             "flows %.1f s", len(idx), n_all, len(areas), diam, t_prep, t_flows)

    model = models.CellposeModel(gpu=device.type == "cuda", device=device,
                                 pretrained_model=False, model_type=None, mkldnn=False,
                                 diam_mean=diam, nchan=2)
    assert not model.pretrained_model, "weights must start random"
    min_masks = 5  # train_seg's default min_train_masks: tiles with fewer are dropped
    nimg = int((n_masks >= min_masks).sum())
    bs = args.batch_size
    scale_range = args.scale_range if args.scale_range is not None else 1.0  # rescale=False
    tic = time.perf_counter()
    t_batch, t_eval_batch = probe(model.net, train_x, train_flows, bs, args.probe_batches,
                                  scale_range, device, torch, np, train)
    t_probe = time.perf_counter() - tic
    budget_s = args.budget_min * 60.0
    remaining = budget_s - (time.perf_counter() - t0)
    chosen = plan(args.safety * remaining, nimg, len(val_x) if val_x else 0, bs, t_batch,
                  t_eval_batch, args.min_epochs, args.max_epochs)
    log.info("probe %.1f s: %.2f s/train batch, %.2f s/val batch; %.0f s left -> %s", t_probe,
             t_batch, t_eval_batch, remaining, chosen)
    if remaining <= 0:
        log.warning("the budget is spent before training: training the minimum anyway")

    tic = time.perf_counter()
    model_file, train_losses, val_losses = train.train_seg(
        model.net, train_data=train_x, train_labels=train_flows,
        test_data=val_x, test_labels=val_flows, load_files=False, batch_size=bs,
        learning_rate=args.learning_rate, weight_decay=args.weight_decay, SGD=False,
        n_epochs=chosen["n_epochs"], normalize=False, channels=None, rescale=False,
        scale_range=args.scale_range, nimg_per_epoch=chosen["nimg_per_epoch"],
        nimg_test_per_epoch=chosen["nimg_val_per_epoch"] or None, min_train_masks=min_masks,
        save_path=str(out), save_every=100, model_name=MODEL_NAME, bsize=224)
    t_fit = time.perf_counter() - tic
    t_train = time.perf_counter() - t0
    epochs_done = int(np.count_nonzero(train_losses))
    log.info("trained %d epochs in %.1f s (training phase %.1f s of %.1f s budget)",
             epochs_done, t_fit, t_train, budget_s)
    del train_x, train_flows, val_x, val_flows

    # -------------------------------------------------------------- prediction phase
    te_img, _, te_coco = split(args.test_split)
    by_id = {int(im["id"]): str(im["file_name"]) for im in te_coco["images"]}
    pred_dir = out / "pred"
    pred_dir.mkdir(exist_ok=True)
    stale = [p for p in pred_dir.rglob("*.tif")]
    for p in stale:  # a previous run's files would be scored with this run's
        p.unlink()
    model.net.eval()
    tic = time.perf_counter()
    counts, per_tile = [], []
    files = {}
    n_test = min(len(te_img), args.max_test) if args.max_test else len(te_img)
    for i in range(n_test):
        t_i = time.perf_counter()
        x = to_cellpose(np.asarray(te_img[i]), lay, np)
        masks = model.eval(x, channels=None, channel_axis=0, diameter=diam,
                           normalize={"normalize": True, "percentile": [1.0, 99.0]},
                           batch_size=bs, flow_threshold=args.flow_threshold,
                           cellprob_threshold=args.cellprob_threshold,
                           min_size=args.min_size)[0]
        masks = np.asarray(masks)
        masks = masks.astype(np.uint16 if masks.max() < 65536 else np.int32)
        name = by_id.get(i, f"{i:04d}")
        path = pred_dir / f"{name}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, masks, compression="zlib")
        files[f"{i:04d}"] = f"{name}.tif"
        counts.append(int(len(np.unique(masks)) - 1))
        per_tile.append(time.perf_counter() - t_i)
        if i % 10 == 0 or i == n_test - 1:
            log.info("predicted %d/%d tiles (%.1f s/tile)", i + 1, n_test,
                     float(np.mean(per_tile)))
    t_pred = time.perf_counter() - tic

    run = {
        "peer": "cellpose", "cellpose_version": cp_version, "torch_version": torch.__version__,
        "numpy_version": np.__version__, "python": platform.python_version(),
        "device": str(device), "threads": args.threads, "seed": args.seed,
        "from_scratch": True, "pretrained_model": None,
        "data": str(data_dir), "splits": {"train": args.train_split, "val": args.val_split,
                                          "test": args.test_split},
        "channels_nonzero": [names[c] for c in channels],
        "cellpose_inputs": [names[c] if c is not None else "zeros" for c in lay],
        "train_tiles": len(idx), "train_tiles_total": n_all,
        "train_tiles_used_by_cellpose": nimg,
        "train_subset_indices": idx.tolist() if len(idx) < n_all else "all",
        "train_nuclei": int(len(areas)), "median_diameter_px": diam,
        "budget_min": args.budget_min, "budget_s": budget_s,
        "train_wall_s": round(t_train, 2),
        "over_budget_s": round(max(0.0, t_train - budget_s), 2),
        "train_breakdown_s": {"prepare": round(t_prep, 2), "flows": round(t_flows, 2),
                              "probe": round(t_probe, 2), "train_seg": round(t_fit, 2)},
        "probe_s_per_batch": {"train": t_batch, "val": t_eval_batch},
        "plan": chosen, "epochs_done": epochs_done,
        "images_seen": epochs_done * chosen["nimg_per_epoch"],
        "final_train_loss": float(train_losses[epochs_done - 1]) if epochs_done else None,
        "val_losses": {int(e): float(v) for e, v in enumerate(val_losses) if v},
        "predict_wall_s": round(t_pred, 2), "predict_s_per_tile": float(np.mean(per_tile)),
        "test_tiles": n_test, "test_tiles_total": len(te_img), "predicted_cells": int(sum(counts)),
        "settings": {
            "optimizer": "AdamW", "learning_rate": args.learning_rate,
            "weight_decay": args.weight_decay, "batch_size": bs, "bsize": 224,
            "rescale": False, "scale_range": scale_range, "min_train_masks": min_masks,
            "normalize": "cellpose normalize_img, 1st-99th percentile per channel",
            "diam_mean": diam, "predict_diameter": diam, "flow_threshold": args.flow_threshold,
            "cellprob_threshold": args.cellprob_threshold, "min_size": args.min_size,
            "min_epochs": args.min_epochs, "max_epochs": args.max_epochs,
            "safety": args.safety,
        },
        "model_file": str(model_file), "pred_dir": str(pred_dir), "pred_files": files,
        "argv": sys.argv[1:] if argv is None else argv,
    }
    (out / "run.json").write_text(json.dumps(run, indent=1))
    log.info("wrote %d label TIFFs to %s and %s (train %.1f s, predict %.1f s)", len(files),
             pred_dir, out / "run.json", t_train, t_pred)
    return 0


if __name__ == "__main__":
    sys.exit(main())
