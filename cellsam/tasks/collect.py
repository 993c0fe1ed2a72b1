"""`cellsam-collect`: one table (CSV + Markdown) from every run folder under a sweep.

A run folder is any folder holding `.hydra/config.yaml`. From each one the table takes
- the run's config values: every key the run overrode on the command line or through a
  sweep (`.hydra/overrides.yaml`), plus `stage` and `data`, plus any `--keys` asked for
  (dotted paths looked up in `config_resolved.yaml`, else `.hydra/config.yaml`);
- its metrics: the numbers in `results.json` (evaluation; nested keys joined with "/") and
  the final training metrics and best monitored score recorded in `run_info.json`
  (`best_score`, `val/...`); `results.json` wins where both have a key;
- its state: `done` once `run_info.json` has an end time, else `incomplete`.

Rows are sorted by `--metric` (best first; runs without it last).

    cellsam-collect outputs/multirun/finder/<sweep id> --metric val/all/box_ap50
    cellsam-collect outputs/multirun/sam/<id> --metric best_score --keys stage.module.lr
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from cellsam.utils.atomic import atomic_path, atomic_write_text

RESULTS = "results.json"
RUN_INFO = "run_info.json"
RESOLVED = "config_resolved.yaml"


def find_runs(roots: Iterable[Path]) -> list[Path]:
    """Run folders (holding `.hydra/config.yaml`) under `roots`, each once, sorted."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if (root / ".hydra" / "config.yaml").is_file():
            found.add(root.resolve())
        for cfg in root.rglob(".hydra/config.yaml"):
            found.add(cfg.parent.parent.resolve())
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> list[Any]:
    """Sort `.../2` before `.../10`."""
    return [int(p) if p.isdigit() else p for p in path.parts]


def flatten(tree: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts as `{"a/b/c": value}` (bools and strings left out)."""
    out: dict[str, float] = {}
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}/"))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out[prefix.rstrip("/")] = float(tree)
    return out


def _read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # a run still writing its file


def _select(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _parse_override(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def read_run(run: Path, keys: Iterable[str] = ()) -> dict[str, Any]:
    """One row: `run`, `status`, config values (`config`) and metrics (`metrics`)."""
    hydra_dir = run / ".hydra"
    # the resolved copy (run_info.py) where there is one: .hydra's keeps ${...} unresolved
    config = _read_yaml(run / RESOLVED) or _read_yaml(hydra_dir / "config.yaml") or {}
    overrides = _read_yaml(hydra_dir / "overrides.yaml") or []
    hydra_cfg = _read_yaml(hydra_dir / "hydra.yaml") or {}
    choices = _select(hydra_cfg, "hydra.runtime.choices") or {}
    values: dict[str, Any] = {
        "stage": _select(config, "stage.name"),
        "data": choices.get("data") or ",".join(_select(config, "data.datasets") or {}),
    }
    for item in overrides:
        key, value = _parse_override(str(item))
        if key.startswith("hydra.") or key in ("launcher", "sweep"):
            continue
        values[key] = value
    for key in keys:
        values[key] = _select(config, key)
    info = _read_json(run / RUN_INFO)
    result = info.get("result") or {}
    metrics = flatten(result.get("metrics") or {})
    if result.get("best_score") is not None:
        metrics["best_score"] = float(result["best_score"])
    metrics.update(flatten(_read_json(run / RESULTS)))
    status = "done" if info.get("end_time") else "incomplete"
    return {"run": run, "status": status, "config": values, "metrics": metrics}


def sort_rows(rows: list[dict[str, Any]], metric: str, mode: str = "max") -> list[dict[str, Any]]:
    """Best first by `metric`; rows without it (or NaN) last, in their original order."""
    sign = -1.0 if mode == "max" else 1.0

    def key(row: dict[str, Any]) -> tuple[int, float]:
        value = row["metrics"].get(metric)
        if value is None or math.isnan(value):
            return (1, 0.0)
        return (0, sign * value)

    return sorted(rows, key=key)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def build_table(rows: list[dict[str, Any]], metric: str, root: Path | None = None,
                show: Iterable[str] = ()) -> tuple[list[str], list[list[Any]], list[str]]:
    """Header and cells for the CSV (every value) and the Markdown column names.

    The Markdown table keeps config columns whose values differ between runs (plus stage
    and data), the sort metric and any `show` metrics.
    """
    config_keys: list[str] = []
    metric_keys: list[str] = []
    for row in rows:
        config_keys += [k for k in row["config"] if k not in config_keys]
        metric_keys += [k for k in row["metrics"] if k not in metric_keys]
    metric_keys = [metric] + sorted(k for k in metric_keys if k != metric)
    header = ["run", "status", *config_keys, *metric_keys]
    cells = []
    for row in rows:
        run = row["run"]
        name = str(run.relative_to(root)) if root and run.is_relative_to(root) else str(run)
        cells.append([name, row["status"], *(row["config"].get(k) for k in config_keys),
                      *(row["metrics"].get(k) for k in metric_keys)])
    varying = [k for k in config_keys if k in ("stage", "data")
               or len({_fmt(r["config"].get(k)) for r in rows}) > 1]
    md_columns = ["run", "status", *varying, metric, *[s for s in show if s != metric]]
    return header, cells, md_columns


def markdown(header: list[str], cells: list[list[Any]], columns: list[str]) -> str:
    index = [header.index(c) if c in header else None for c in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in cells:
        lines.append("| " + " | ".join(_fmt(row[i]) if i is not None else "" for i in index) + " |")
    return "\n".join(lines) + "\n"


def collect(roots: list[Path], metric: str, mode: str = "max", out: Path | None = None,
            keys: Iterable[str] = (), show: Iterable[str] = ()) -> tuple[Path, Path, int]:
    """Write `<out>.csv` and `<out>.md`; returns their paths and the number of runs."""
    runs = find_runs(roots)
    if not runs:
        raise FileNotFoundError(f"no run folder (with .hydra/config.yaml) under {roots}")
    rows = sort_rows([read_run(r, keys) for r in runs], metric, mode)
    root = Path(roots[0]).resolve()
    header, cells, md_columns = build_table(rows, metric, root, show)
    out = Path(out) if out else root / "summary"
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out.with_suffix(".csv"), out.with_suffix(".md")
    with atomic_path(csv_path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in cells])
    order = "highest" if mode == "max" else "lowest"
    title = f"Runs under `{root}`, sorted by `{metric}` ({order} first)\n\n"
    atomic_write_text(md_path, title + markdown(header, cells, md_columns))
    return csv_path, md_path, len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cellsam-collect", description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="sweep or output folders to search")
    parser.add_argument("--metric", required=True, help="sort key, e.g. val/all/box_ap50")
    parser.add_argument("--mode", choices=("max", "min"), default="max",
                        help="max: higher is better (default); min: e.g. a loss")
    parser.add_argument("--out", type=Path, default=None,
                        help="output path without suffix (default: <first root>/summary)")
    parser.add_argument("--keys", nargs="*", default=[],
                        help="extra config values to add, as dotted paths (stage.module.lr)")
    parser.add_argument("--show", nargs="*", default=[],
                        help="extra metrics to show in the Markdown table")
    args = parser.parse_args(argv)
    try:
        csv_path, md_path, n = collect(args.roots, args.metric, args.mode, args.out,
                                       args.keys, args.show)
    except FileNotFoundError as err:
        print(f"cellsam-collect: {err}", file=sys.stderr)
        return 1
    print(md_path.read_text())
    print(f"{n} runs -> {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
