"""Paired comparison of two result folders (cellsam.tasks.compare), numbers by hand."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from cellsam.tasks.compare import compare, compare_metric, main


def write_run(folder, values: dict[str, list[float]], names=("i1", "i2", "i3", "i4"),
              dataset="d"):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "results_per_image.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dataset", "index", "name", *values])
        for i, name in enumerate(names):
            w.writerow([dataset, i, name,
                        *("" if math.isnan(v[i]) else repr(v[i]) for v in values.values())])
    return folder


@pytest.fixture()
def runs(tmp_path):
    # Exactly representable values: differences +0.25, 0, +0.5, -0.25.
    a = write_run(tmp_path / "A", {"f1_50": [0.5, 0.5, 0.25, 0.75],
                                   "aji": [0.5, math.nan, 0.5, 0.5]})
    b = write_run(tmp_path / "B", {"f1_50": [0.75, 0.5, 0.75, 0.5],
                                   "aji": [0.5, 0.5, 0.5, 0.5]})
    return a, b


def test_paired_numbers_by_hand(runs):
    out = compare(*runs, metrics=["f1_50", "aji"], n_boot=500)
    f1 = out["metrics"]["f1_50"]
    assert out["n_images"] == 4
    assert (f1["n"], f1["mean_a"], f1["mean_b"], f1["mean_diff"]) == (4, 0.5, 0.625, 0.125)
    assert (f1["better"], f1["worse"], f1["tied"]) == (2, 1, 1)
    assert [(i["name"], i["diff"]) for i in f1["improved"]] == [("i3", 0.5), ("i1", 0.25)]
    assert [(i["name"], i["diff"]) for i in f1["worsened"]] == [("i4", -0.25)]
    # sign test: 2 of 3 non-tied better; Binomial(3, 1/2) two-sided p = 1
    assert f1["sign_test_p"] == pytest.approx(1.0)
    # Wilcoxon: |d| ranks 1.5 (0.25), 3 (0.5), 1.5 (-0.25): W+ = 4.5, W- = 1.5 -> 1.5
    assert f1["wilcoxon_statistic"] == 1.5 and 0 < f1["wilcoxon_p"] <= 1
    lo, hi = f1["ci"]
    assert -0.25 <= lo <= 0.125 <= hi <= 0.5
    # the image with AJI undefined in A is left out of that metric only
    aji = out["metrics"]["aji"]
    assert (aji["n"], aji["n_undefined"], aji["mean_diff"], aji["tied"]) == (3, 1, 0.0, 3)
    assert math.isnan(aji["sign_test_p"]) and math.isnan(aji["wilcoxon_p"])


def test_paired_interval_and_a_clear_sign_test():
    keys = [("d", f"i{i}") for i in range(4)]
    w = np.array([[4, 0, 0, 0], [0, 0, 4, 0], [1, 1, 1, 1]])  # mean diffs 0.25, 0.5, 0.125
    r = compare_metric(keys, np.array([0.5, 0.5, 0.25, 0.75]), np.array([0.75, 0.5, 0.75, 0.5]),
                       level=0.5, weights=w)
    assert r["ci"] == pytest.approx([0.1875, 0.375])
    # 8 of 8 better: two-sided sign test p = 2 / 2**8
    keys = [("d", str(i)) for i in range(8)]
    r = compare_metric(keys, np.zeros(8), np.arange(1, 9) / 10, n_boot=200)
    assert r["sign_test_p"] == pytest.approx(2 / 256) and r["better"] == 8
    assert r["wilcoxon_statistic"] == 0.0 and r["wilcoxon_p"] == pytest.approx(2 / 256)


def test_different_images_are_refused_naming_them(tmp_path):
    a = write_run(tmp_path / "A", {"f1_50": [1.0, 1.0, 1.0]}, names=("x", "y", "z"))
    b = write_run(tmp_path / "B", {"f1_50": [1.0, 1.0, 1.0]}, names=("x", "y", "w"))
    with pytest.raises(ValueError, match=r"1 only in A .*d/z; 1 only in B .*d/w"):
        compare(a, b, metrics=["f1_50"])
    with pytest.raises(ValueError, match="no per-image column 'pq_50'"):
        compare(a, a, metrics=["pq_50"])


def test_cli_writes_the_report(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main([str(runs[0]), str(runs[1] / "results_per_image.csv"), "--metrics", "f1_50",
                 "--out", str(out), "--n-boot", "200"]) == 0
    printed = capsys.readouterr().out
    assert "| F1@0.5 (CellSAM) | 4 | 0.500 | 0.625 | +0.1250" in printed
    assert "F1@0.5 (CellSAM), better in B: d/i3 (+0.500), d/i1 (+0.250)" in printed
    data = json.loads((out / "compare.json").read_text())
    assert data["metrics"]["f1_50"]["better"] == 2
    rows = list(csv.DictReader((out / "compare_per_image.csv").open()))
    assert [float(r["f1_50_diff"]) for r in rows] == [0.25, 0.0, 0.5, -0.25]
    assert (out / "compare.md").read_text() == printed
    assert main([str(runs[0]), str(tmp_path / "nowhere")]) == 2
    assert "no per-image results" in capsys.readouterr().err
