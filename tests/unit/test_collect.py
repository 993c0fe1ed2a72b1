"""`cellsam-collect`: run folders -> one CSV and one Markdown table sorted by a metric."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from cellsam.tasks.collect import flatten, main, read_run


def _fake_run(folder: Path, lr: float, wd: float, results: dict | None, best: float | None,
              done: bool = True) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    config = {"stage": {"name": "sam", "module": {"lr": lr, "weight_decay": wd}},
              "data": {"datasets": {"synthetic": {"path": "/x"}}}}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        ["stage=sam", f"stage.module.lr={lr}", f"stage.module.weight_decay={wd}",
         "hydra.launcher.partition=gpu"]))
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"runtime": {"choices": {"data": "synthetic"}}}}))
    info = {"start_time": "t0", "end_time": "t1" if done else None,
            "result": {"best_score": best, "metrics": {"val/all/mask_iou": best or 0.0,
                                                        "train/loss": 1.0}}}
    (folder / "run_info.json").write_text(json.dumps(info))
    if results is not None:
        (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_flatten_keeps_numbers_only():
    assert flatten({"a": {"b": 1, "c": "x", "d": True}, "e": 2.5}) == {"a/b": 1.0, "e": 2.5}


def test_read_run(tmp_path):
    run = _fake_run(tmp_path / "0", 1e-4, 0.0, {"test": {"all": {"f1": 0.7}}}, 0.5)
    row = read_run(run, keys=["stage.module.weight_decay"])
    assert row["status"] == "done"
    assert row["config"]["stage"] == "sam" and row["config"]["data"] == "synthetic"
    assert row["config"]["stage.module.lr"] == "0.0001"
    assert "hydra.launcher.partition" not in row["config"]
    assert row["config"]["stage.module.weight_decay"] == 0.0
    assert row["metrics"]["test/all/f1"] == 0.7 and row["metrics"]["best_score"] == 0.5


def test_collect_sorts_and_writes_csv_and_markdown(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _fake_run(sweep / "0", 1e-4, 0.0, {"test": {"all": {"f1": 0.70}}}, 0.50)
    _fake_run(sweep / "1", 3e-4, 0.0, {"test": {"all": {"f1": 0.80}}}, 0.40)
    _fake_run(sweep / "2", 1e-3, 0.0, None, None, done=False)  # still running: sorted last
    _fake_run(sweep / "10", 1e-5, 0.0, {"test": {"all": {"f1": 0.75}}}, 0.45)
    assert main([str(sweep), "--metric", "test/all/f1", "--show", "best_score"]) == 0
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["1", "10", "0", "2"]
    assert [r["status"] for r in rows] == ["done", "done", "done", "incomplete"]
    assert rows[0]["stage.module.lr"] == "0.0003" and rows[0]["test/all/f1"] == "0.8"
    md = (sweep / "summary.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| run"))
    # the constant weight decay is left out of the Markdown table, the swept lr is in
    assert "stage.module.lr" in header and "weight_decay" not in header
    assert header.split(" | ")[-2:] == ["test/all/f1", "best_score |"]
    assert md.index("| 1 |") < md.index("| 10 |") < md.index("| 0 |") < md.index("| 2 |")
    assert "4 runs" in capsys.readouterr().out


def test_collect_min_mode_and_out(tmp_path):
    sweep = tmp_path / "s"
    _fake_run(sweep / "0", 1e-4, 0.0, None, 0.5)
    _fake_run(sweep / "1", 3e-4, 0.0, None, 0.4)
    out = tmp_path / "tables" / "lr"
    assert main([str(sweep), "--metric", "best_score", "--mode", "min", "--out", str(out)]) == 0
    with out.with_suffix(".csv").open() as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["1", "0"]
    assert out.with_suffix(".md").is_file()


def test_collect_without_runs_fails(tmp_path, capsys):
    assert main([str(tmp_path), "--metric", "x"]) == 1
    assert "no run folder" in capsys.readouterr().err
