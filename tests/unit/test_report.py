"""Per-image records -> per-dataset summaries (results.json schema), paper table, writers."""

from __future__ import annotations

import csv
import json
import math
import random

import numpy as np
import pytest

from cellsam.metrics import evaluate_coco, evaluate_deepcell, evaluate_f1
from cellsam.metrics.dice import foreground_overlap
from cellsam.metrics.report import (
    SCHEMA_KEYS,
    image_record,
    markdown_table,
    paper_dataset,
    paper_f1,
    summarize,
    write_results,
)


def paint(*rects, shape=(32, 32)) -> np.ndarray:
    """Label image with rectangles `(id, y0, y1, x0, x1)`."""
    lab = np.zeros(shape, np.int64)
    for i, y0, y1, x0, x1 in rects:
        lab[y0:y1, x0:x1] = i
    return lab


# (true, pred, scores): a hit + a miss + a false positive; an empty pair (F1 undefined -> 0);
# a cell split in two halves (IoU 0.5 each: F1@0.5 match, DeepCell split); two cells merged.
PAIRS = [
    (paint((1, 0, 8, 0, 8), (2, 20, 28, 20, 28)), paint((5, 0, 8, 0, 8), (7, 10, 14, 0, 4)),
     [0.9, 0.3]),
    (paint(), paint(), []),
    (paint((1, 4, 12, 4, 12)), paint((1, 4, 12, 4, 8), (2, 4, 12, 8, 12)), [0.8, 0.7]),
    (paint((1, 0, 8, 0, 8), (2, 0, 8, 8, 16)), paint((3, 0, 8, 0, 16)), [0.6]),
]


def records(dataset: str = "a", pairs=PAIRS, with_coco: bool = True) -> list[dict]:
    return [image_record(dataset, i, t, p, s, with_coco) for i, (t, p, s) in enumerate(pairs)]


def test_summary_equals_metric_functions():
    out = summarize(records())
    assert list(out) == ["a", "all"] and out["a"] == out["all"]
    s = out["a"]
    assert set(SCHEMA_KEYS) <= set(s)
    trues, preds, scores = zip(*PAIRS)
    f1 = evaluate_f1(trues, preds, (0.5,))
    assert s["n_images"] == 4 and s["n_cells"] == 5 and s["n_pred_cells"] == 5
    assert s["f1_50_mean"] == pytest.approx(f1["f1_mean@0.50"], abs=1e-12)
    assert s["f1_50_pooled"] == pytest.approx(f1["f1_pooled@0.50"], abs=1e-12)
    assert s["precision_50"] == pytest.approx(f1["precision@0.50"])
    assert s["recall_50"] == pytest.approx(f1["recall@0.50"])
    # by hand: per-image F1 0.5, 0 (empty), 2/3 (one half matches at IoU 0.5), 2/3 (merge)
    assert s["f1_50_mean"] == pytest.approx((0.5 + 0 + 2 / 3 + 2 / 3) / 4)
    dc = evaluate_deepcell(trues, preds)
    assert (s["deepcell_f1_60"], s["deepcell_precision_60"], s["deepcell_recall_60"]) == (
        pytest.approx(dc["f1"]), pytest.approx(dc["precision"]), pytest.approx(dc["recall"]))
    assert (s["splits"], s["merges"]) == (dc["splits"], dc["merges"]) == (1, 1)
    coco = evaluate_coco(list(trues), [(p, sc) for p, sc in zip(preds, scores)])
    assert s["coco_map"] == pytest.approx(coco["segm_mAP"], abs=1e-9)
    assert s["coco_ap50"] == pytest.approx(coco["segm_AP50"], abs=1e-9)
    assert s["coco_box_map"] == pytest.approx(coco["bbox_mAP"], abs=1e-9)
    assert s["coco_box_ap50"] == pytest.approx(coco["bbox_AP50"], abs=1e-9)
    # foreground Dice by hand: 2*64 / (128 + 80), the empty pair 1, the split and the merge
    # cover exactly the true foreground
    assert s["dice"] == pytest.approx((128 / 208 + 1 + 1 + 1) / 4, abs=1e-12)


def test_foreground_dice_counts_and_shape_check():
    t, p = paint((1, 0, 4, 0, 4), (2, 0, 4, 6, 8)), paint((9, 2, 6, 0, 4))
    fo = foreground_overlap(t, p)
    assert (fo.inter, fo.total, fo.dice) == (8, 24 + 16, 16 / 40)
    assert foreground_overlap(paint(), paint()).dice == 1.0
    assert foreground_overlap(t, paint()).dice == 0.0
    with pytest.raises(ValueError, match="shape mismatch"):
        foreground_overlap(t, paint(shape=(16, 16)))
    # from the pairs equals the pixel count, on random label images with touching objects
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 6, (2, 32, 32))
        fo = foreground_overlap(a, b)
        assert fo.inter == np.count_nonzero((a > 0) & (b > 0))
        assert fo.total == np.count_nonzero(a) + np.count_nonzero(b)


def test_empty_image_counts_as_zero_and_perfect_prediction_scores_one():
    lab = paint((1, 0, 8, 0, 8), (2, 10, 20, 10, 20))
    s = summarize([image_record("x", 0, lab, lab, [0.5, 0.6]),
                   image_record("x", 1, paint(), paint(), [])])["x"]
    assert s["f1_50_mean"] == 0.5  # (1 + 0) / 2: the empty image's undefined F1 is 0
    assert s["f1_50_pooled"] == s["deepcell_f1_60"] == s["coco_map"] == s["coco_box_ap50"] == 1


def test_union_order_and_coco_switch():
    recs = records("b") + records("a", PAIRS[:2])
    out = summarize(recs, order=["b", "a"])
    assert list(out) == ["b", "a", "all"]
    assert out["all"]["n_images"] == 6 and out["all"]["n_cells"] == 7
    assert out["all"]["splits"] == out["b"]["splits"] + out["a"]["splits"]
    shuffled = recs[:]
    random.Random(0).shuffle(shuffled)
    again = summarize(shuffled, order=["b", "a"])
    for name in out:  # exactly equal: sums of counts and an exactly rounded F1 sum
        for key, value in out[name].items():
            assert again[name][key] == value or (math.isnan(value) and math.isnan(again[name][key]))
    no_coco = summarize(records(with_coco=False))["a"]
    assert math.isnan(no_coco["coco_map"]) and no_coco["f1_50_mean"] == out["b"]["f1_50_mean"]


@pytest.mark.parametrize(
    "name,row", [("dsb2018", "DSB"), ("h&e", "H&E"), ("H_E", "H&E"), ("tissuenet", "TissueNet"),
                 ("YeaZ", "YeaZ"), ("yeastnet", "YeastNet"), ("phase400", "Phase400"),
                 ("livecell", "LIVECell"), ("synthetic", None)])
def test_paper_aliases(name, row):
    assert paper_dataset(name) == row


def test_paper_numbers():
    assert paper_f1("deepbacs") == (0.931, 0.912, "generalist")
    assert paper_f1("deepbacs", "specialist") == (0.892, 0.927, "specialist")
    assert paper_f1("livecell", "generalist") == (0.499, 0.381, "zero-shot")
    assert paper_f1("synthetic")[:2] == (None, None)


def test_writers(tmp_path):
    results = summarize(records("deepbacs") + records("synthetic", PAIRS[:1], with_coco=False))
    paths = write_results(tmp_path, results, {"checkpoint": "x.ckpt", "split": "test"})
    assert {p.name for p in tmp_path.iterdir()} == {f"results.{s}" for s in
                                                    ("json", "csv", "md", "png")}
    data = json.loads(paths["json"].read_text())
    for name in ("deepbacs", "synthetic", "all"):
        assert set(SCHEMA_KEYS) <= set(data[name])
    assert data["synthetic"]["coco_map"] is None  # NaN -> null
    assert data["meta"]["paper"]["deepbacs"]["cellsam_f1_50_mean"] == 0.931
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["dataset"] for r in rows] == ["deepbacs", "synthetic", "all"]
    assert rows[0]["paper_cellpose_f1_50_mean"] == "0.912"
    md = paths["md"].read_text()
    for header in ("F1@0.5 (CellSAM), per-image mean (ours)", "CellSAM generalist (paper)",
                   "DeepCell F1@0.6", "COCO mask mAP@[.5:.95]", "COCO box AP@0.5",
                   "AP@0.5 (Cellpose)", "PQ@0.5", "mSA (micro-sam)", "released evaluation"):
        assert header in md
    assert "| deepbacs | 4 | 5 |" in md and "0.931" in md and "| all |" in md
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    # settings changed from the preset are named in the table's title
    meta = {"checkpoint": "x.ckpt", "split": "test", "inference_preset": "paper",
            "inference_changes": {"box_threshold": 0.25, "duplicate_overlap": 0.5}}
    md = write_results(tmp_path, results, meta)["md"].read_text()
    assert md.startswith("### checkpoint=x.ckpt split=test inference_preset=paper (changed: "
                         "box_threshold=0.25, duplicate_overlap=0.5)")


def test_markdown_without_paper():
    md = markdown_table(summarize(records("deepbacs")), compare=False)
    assert "paper" not in md and "| all |" not in md  # one dataset: no repeated union row


def test_a_failed_results_write_keeps_the_previous_tables(tmp_path, monkeypatch):
    import cellsam.metrics.report as report

    results = {"a": {k: 0.5 for k in report.SCHEMA_KEYS}, "all": {k: 0.5 for k in
                                                                    report.SCHEMA_KEYS}}
    paths = report.write_results(tmp_path, results, {"split": "test"}, compare=False)
    before = {s: p.read_bytes() for s, p in paths.items()}

    def fails(path, *args):
        raise OSError("disk full")

    monkeypatch.setattr(report, "_bar_chart", fails)
    with pytest.raises(OSError, match="disk full"):
        report.write_results(tmp_path, {**results, "a": {**results["a"], "f1_50_mean": 0.9}},
                             {"split": "test"}, compare=False)
    assert paths["png"].read_bytes() == before["png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())
