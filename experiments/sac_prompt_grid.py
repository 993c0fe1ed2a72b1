"""SAC's inference settings on a split: a grid on validation, the chosen row and its ablations
on test. Each image's encoder, prompter and neck run once; every setting then costs only the
prompt discrimination, the mask decoder and the metrics.

Validation (choose): every combination of the `--grid` values is scored by per-image mean
F1@0.5 (then DeepCell F1@0.6, Dice, precision, recall); the best F1@0.5 is printed as
overrides for `eval.py`, and `--out` keeps the table and the choice. A setting decodes every
nucleus again (on 2 CPU cores about a second per DSB tile), so `--one-factor` scores only the
checkpoint's own setting and, per key, that setting with the key at each other value, and
chooses per key the value with the best F1@0.5 (one pass of coordinate ascent).

    python experiments/sac_prompt_grid.py --ckpt outputs/dsb_lite_sac/main/checkpoints/last.ckpt \
        --data data/dsb2018_fixed --split val --out outputs/dsb_lite_sac/val_grid.json \
        --grid prompt_selection=centroid,max_prob prompt_negatives=none,both \
        points_per_cell=1,3 prompt_threshold=0.4,0.5,0.6

Test (report, never choose): `--from-val` reads that file; the rows are the setting chosen
on validation and, for each grid key, the same setting with that one key at each other value
validation tried (the one-factor ablations), scored with every metric, COCO included.

    python experiments/sac_prompt_grid.py --ckpt ... --data data/dsb2018_fixed --split test \
        --from-val outputs/dsb_lite_sac/val_grid.json --out outputs/dsb_lite_sac/test_rows.json

Labels equal `eval.py`'s for the same settings: the images go through the data module's
dataset as in `eval.py`, and `SACPredictor.segment_inputs` is exactly `prompt_inputs` then
`cells_from_maps`, composed by `cells_to_prediction` (asserted by the tests).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from cellsam.data.datamodule import CellSplitDataset
from cellsam.data.format import open_split
from cellsam.inference.predictor import cells_to_prediction
from cellsam.inference.sac_predictor import SACPredictor
from cellsam.inference.settings import NONE_WORDS, InferenceSettings
from cellsam.metrics.report import image_record, summarize
from cellsam.utils.atomic import atomic_write_text

#: Keys of each row, in the printed order.
ROW_KEYS = ("f1_50_mean", "deepcell_f1_60", "coco_map", "coco_ap50", "dice", "precision_50",
            "recall_50", "n_pred_cells")


def _typed(key: str, text: str, hint: Any) -> Any:
    """One `--grid` value as the `InferenceSettings` field's type `hint`: a word the field
    names, else YAML (as Hydra types an override), checked; "none"/"off" mean None only where
    None is a value (as in `resolve_settings`)."""
    allowed = typing.get_args(hint) or (hint,)
    if text.lower() in NONE_WORDS and type(None) in allowed:
        return None
    if str in allowed:
        return text
    value = yaml.safe_load(text)
    if float in allowed and type(value) is int:
        value = float(value)
    if not isinstance(value, allowed) or (type(value) is bool and bool not in allowed):
        names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
        raise SystemExit(f"--grid {key}: {text!r} is not of type {names}")
    return value


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """`key=v1,v2` items -> `{key: [typed values]}`, typed as the `InferenceSettings` field."""
    hints = typing.get_type_hints(InferenceSettings)
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"--grid {item!r}: write key=value1,value2")
        if key not in hints:
            raise SystemExit(f"--grid {item!r}: unknown inference setting {key!r}")
        grid[key] = [_typed(key, v, hints[key]) for v in values.split(",")]
    return grid


def grid_rows(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in `itertools.product` order."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def ablation_rows(chosen: Mapping[str, Any], grid: Mapping[str, Sequence[Any]]
                  ) -> list[dict[str, Any]]:
    """The chosen setting, then per grid key the chosen setting with that key at each other
    value of the grid (one factor at a time)."""
    rows = [dict(chosen)]
    for key, values in grid.items():
        rows += [{**chosen, key: v} for v in values if v != chosen[key]]
    return rows


def choose_per_key(base: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                   grid: Mapping[str, Sequence[Any]], score: str = "f1_50_mean"
                   ) -> dict[str, Any]:
    """Per grid key, the value of the best-scoring row among `base` and the rows that change
    only that key (`ablation_rows(base, grid)`); ties keep the base value."""
    chosen = {}
    for key in grid:
        same = [r for r in rows if all(r[k] == base[k] for k in grid if k != key)]
        best = max(same, key=lambda r: (r[score], r[key] == base[key]))
        chosen[key] = best[key]
    return chosen


def precompute(predictor: SACPredictor, dataset: CellSplitDataset, batch: int
               ) -> list[tuple[np.ndarray, np.ndarray, torch.Tensor]]:
    """Per image: foreground and centre probabilities `[S, S]` and embedding `[1, P, h, w]`."""
    out = []
    for start in range(0, len(dataset), batch):
        images = torch.stack([dataset[i]["image"]
                              for i in range(start, min(start + batch, len(dataset)))])
        fg, centre, emb = predictor.prompt_inputs(images)
        out += [(fg[j], centre[j], emb[j:j + 1]) for j in range(len(images))]
    return out


def score_rows(predictor: SACPredictor, rows: Sequence[Mapping[str, Any]], inputs, labels,
               name: str, coco: bool) -> list[dict[str, Any]]:
    """Score each row's settings on every image (`inputs` from `precompute`)."""
    out = []
    for row in rows:
        t = time.perf_counter()
        p = predictor.configure(**row)
        records = []
        for i, ((fg, centre, emb), label) in enumerate(zip(inputs, labels)):
            pred = cells_to_prediction(p.cells_from_maps(fg, centre, emb, label.shape),
                                       label.shape, p.settings.overlap)
            records.append(image_record(name, i, label, pred.labels, pred.scores,
                                        with_coco=coco))
        scores = summarize(records, coco=coco)["all"]
        out.append({**row, **{k: float(scores[k]) for k in ROW_KEYS},
                    "seconds": round(time.perf_counter() - t, 1)})
        print(json.dumps(out[-1]), flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, type=Path, help="a stage=sac checkpoint")
    ap.add_argument("--data", required=True, type=Path, help="converted dataset folder")
    ap.add_argument("--split", default="val")
    ap.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2",
                    help="inference settings to try (validation)")
    ap.add_argument("--one-factor", action="store_true",
                    help="validation: vary one key at a time from the checkpoint's settings")
    ap.add_argument("--from-val", type=Path, help="the validation run's --out (test)")
    ap.add_argument("--chosen-only", action="store_true",
                    help="test: the chosen setting alone, without its one-factor rows")
    ap.add_argument("--batch", type=int, default=4, help="images through the encoder together")
    ap.add_argument("--max-images", type=int, help="the first N images of the split only")
    ap.add_argument("--out", type=Path, help="write the rows (and the choice) as JSON here")
    args = ap.parse_args(argv)
    if args.split == "test":
        if args.from_val is None or args.grid:
            raise SystemExit("on the test split the settings come from validation: pass "
                             "--from-val <the validation run's --out> and no --grid")
        val = json.loads(args.from_val.read_text())
        grid, coco = val["grid"], True
        rows = [val["chosen"]] if args.chosen_only else ablation_rows(val["chosen"], grid)
    else:
        if args.from_val is not None or not args.grid:
            raise SystemExit("on a validation split give --grid (and no --from-val)")
        grid = parse_grid(args.grid)
        coco = False

    predictor = SACPredictor.from_checkpoint(args.ckpt, device="cpu")
    base = {k: getattr(predictor.settings, k) for k in grid}
    if args.split != "test":
        rows = ablation_rows(base, grid) if args.one_factor else grid_rows(grid)
    data = open_split(args.data, args.split)
    n = len(data) if args.max_images is None else min(args.max_images, len(data))
    dataset = CellSplitDataset(data, data.name, predictor.model.image_size, indices=list(range(n)))
    labels = [np.asarray(data.labels[i, 0], np.int64) for i in range(n)]
    t = time.perf_counter()
    inputs = precompute(predictor, dataset, args.batch)
    encode_s = time.perf_counter() - t
    print(f"encoder, prompter and neck on {n} {args.split} images: {encode_s:.1f} s", flush=True)
    scored = score_rows(predictor, rows, inputs, labels, data.name, coco)
    result: dict[str, Any] = {"ckpt": str(args.ckpt), "split": args.split, "n_images": n,
                              "grid": grid, "rows": scored, "seconds_encode": encode_s}
    if args.split == "test":
        result["chosen"] = val["chosen"]
    else:
        if args.one_factor:
            result["chosen"] = choose_per_key(base, scored, grid)
        else:
            best = max(scored, key=lambda r: r["f1_50_mean"])
            result["chosen"] = {k: best[k] for k in grid}
        print(f"chosen on {args.split}: "
              + " ".join(f"inference.{k}={v}" for k, v in result["chosen"].items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
