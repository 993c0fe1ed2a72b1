"""Metrics on REAL label images (../shared/data) against perturbed copies whose effect
on every count can be worked out independently (per-object masks, areas).

Skipped when the data folder is absent; `CELLSAM_SHARED_DATA` overrides its location.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cellsam.metrics import (
    DEFAULT_THRESHOLDS,
    deepcell_counts,
    evaluate_coco,
    match_counts,
)


def _data_dir() -> Path | None:
    env = os.environ.get("CELLSAM_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return path if path.is_dir() else None


DATA = _data_dir()
pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(
        DATA is None or not (DATA / "dsb2018_fixed" / "labels").is_dir(),
        reason="real data ../shared/data/dsb2018_fixed not found (set CELLSAM_SHARED_DATA)",
    ),
]
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def _read(path: Path) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(path)).astype(np.int64)


def _pick() -> list[tuple[str, np.ndarray]]:
    """Three DSB images with >= 20 nuclei, the first with > 100, the last bacteria frame
    (the most cells of the time-lapse)."""
    if DATA is None:
        return []
    out, big = [], None
    for f in sorted((DATA / "dsb2018_fixed" / "labels").glob("*.tif")):
        lab = _read(f)
        n = np.unique(lab[lab > 0]).size
        if n >= 20 and len(out) < 3 and max(lab.shape) <= 512:
            out.append((f"dsb:{f.stem[:8]}", lab))
        if n > 100 and big is None and max(lab.shape) <= 512:
            big = (f"dsb:{f.stem[:8]}", lab)
        if len(out) == 3 and big is not None:
            break
    out.append(big)
    bact = sorted((DATA / "bacteria_phase" / "labels").glob("*.tif"))
    if bact:
        out.append(("bacteria:" + bact[-1].stem, _read(bact[-1])))
    return [x for x in out if x is not None]


CASES = _pick()
IDS = [name for name, _ in CASES]


def object_ids(lab: np.ndarray) -> np.ndarray:
    return np.unique(lab[lab > 0])


def ap_found(k: int, n: int) -> float:
    """COCO AP when k of n objects are found with no false positive."""
    return float(np.sum(RECALL_POINTS <= k / n + 1e-12)) / 101


def touching_pair(lab: np.ndarray, max_share: float = 0.58) -> tuple[int, int] | None:
    """Two 4-adjacent objects whose larger one has < max_share of their joint area."""
    area = np.bincount(lab.ravel())
    pairs = set()
    for a, b in ((lab[:, :-1], lab[:, 1:]), (lab[:-1], lab[1:])):
        m = (a != b) & (a > 0) & (b > 0)
        pairs |= set(zip(a[m].tolist(), b[m].tolist()))
    for a, b in sorted(pairs):
        big = max(area[a], area[b])
        if min(area[a], area[b]) >= 30 and big / (area[a] + area[b]) < max_share:
            return a, b
    return None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_identical_and_zero_shift(case):
    _, lab = case
    n = object_ids(lab).size
    pred = np.roll(lab, (0, 0), (0, 1))
    for c in match_counts(lab, pred, DEFAULT_THRESHOLDS):
        assert (c.tp, c.fp, c.fn, c.f1) == (n, 0, 0, 1.0)
    d = deepcell_counts(lab, pred)
    assert (d.correct, d.missed, d.gained, d.splits, d.merges, d.catastrophes) == (n, 0, 0, 0, 0, 0)
    scores = np.linspace(1.0, 0.5, n)
    out = evaluate_coco([lab], [(pred, scores)])
    assert out["segm_mAP"] == 1.0 and out["bbox_mAP"] == 1.0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_delete_one_cell(case):
    _, lab = case
    ids = object_ids(lab)
    n = ids.size
    pred = np.where(lab == ids[n // 2], 0, lab)
    for c in match_counts(lab, pred, DEFAULT_THRESHOLDS):
        assert (c.tp, c.fp, c.fn) == (n - 1, 0, 1)
    d = deepcell_counts(lab, pred)
    assert (d.correct, d.missed, d.gained, d.splits, d.merges) == (n - 1, 1, 0, 0, 0)
    for backend in ("faster", "pycocotools"):
        out = evaluate_coco([lab], [(pred, np.linspace(1.0, 0.5, n - 1))], backend=backend)
        assert out["segm_mAP"] == pytest.approx(ap_found(n - 1, n))


@pytest.mark.parametrize("case", CASES[:3], ids=IDS[:3])
def test_merge_two_touching_cells(case):
    _, lab = case
    pair = touching_pair(lab)
    assert pair is not None, "expected two touching nuclei of similar size"
    a, b = pair
    n = object_ids(lab).size
    pred = np.where(lab == b, a, lab)
    area_a, area_b = np.sum(lab == a), np.sum(lab == b)
    share = max(area_a, area_b) / (area_a + area_b)  # IoU of the merge with the larger
    assert 0.5 <= share < 0.6
    for c in match_counts(lab, pred, DEFAULT_THRESHOLDS):
        if c.threshold <= share:  # the merge still matches the larger cell
            assert (c.tp, c.fp, c.fn) == (n - 1, 0, 1)
        else:
            assert (c.tp, c.fp, c.fn) == (n - 2, 1, 2)
    # DeepCell: share < 0.6, so neither cell matches directly: one merge of 2 cells.
    d = deepcell_counts(lab, pred)
    assert (d.correct, d.missed, d.gained, d.merges, d.missed_det_from_merge) == (n - 2, 0, 0, 1, 1)


@pytest.mark.parametrize("case", CASES[:3], ids=IDS[:3])
def test_split_one_cell_in_two(case):
    _, lab = case
    ids = object_ids(lab)
    area = np.bincount(lab.ravel())
    target = int(ids[np.argmax(area[ids])])  # the largest nucleus
    ys, xs = np.nonzero(lab == target)
    cut = np.sort(xs)[xs.size // 2]
    right = xs >= cut
    pred = lab.copy()
    pred[ys[right], xs[right]] = lab.max() + 1
    big = max(right.sum(), (~right).sum()) / xs.size  # IoU of the larger half
    assert 0.5 <= big < 0.6
    n = ids.size
    c = match_counts(lab, pred, (0.5,))[0]
    assert (c.tp, c.fp, c.fn) == (n, 1, 0)  # the larger half still matches at 0.5
    d = deepcell_counts(lab, pred)
    assert (d.correct, d.missed, d.gained, d.splits, d.gained_det_from_split) == (n - 1, 0, 0, 1, 1)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_shift_by_two_pixels(case):
    _, lab = case
    lab = np.pad(lab, 4)  # no cell leaves the frame
    pred = np.roll(lab, (2, 1), (0, 1))
    ids = object_ids(lab)
    # Each cell's IoU with its own shifted copy, one mask at a time.
    self_iou = []
    for i in ids:
        m = lab == i
        inter = np.sum(m & np.roll(m, (2, 1), (0, 1)))
        self_iou.append(inter / (2 * m.sum() - inter))
    self_iou = np.array(self_iou)
    for c in match_counts(lab, pred, DEFAULT_THRESHOLDS):
        k = int(np.sum(self_iou >= c.threshold))
        assert (c.tp, c.fp, c.fn) == (k, ids.size - k, ids.size - k)
        assert c.f1 == pytest.approx(k / ids.size)
    assert self_iou.max() < 1.0  # every cell moved


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_erode_every_cell_by_one_pixel(case):
    _, lab = case
    p = np.pad(lab, 1)
    centre = p[1:-1, 1:-1]
    keep = (
        (p[:-2, 1:-1] == centre) & (p[2:, 1:-1] == centre)
        & (p[1:-1, :-2] == centre) & (p[1:-1, 2:] == centre)
    )
    pred = np.where(keep, lab, 0)
    ids = object_ids(lab)
    area = np.bincount(lab.ravel(), minlength=lab.max() + 1)[ids]
    kept = np.bincount(pred.ravel(), minlength=lab.max() + 1)[ids]
    ratio = kept / area  # IoU of a cell with its own eroded copy
    assert np.all(ratio[area >= 100] >= 0.5), "big cells keep half their pixels"
    n_pred = int(np.sum(kept > 0))
    for c in match_counts(lab, pred, DEFAULT_THRESHOLDS):
        k = int(np.sum(ratio >= c.threshold))
        assert (c.tp, c.n_pred, c.fn) == (k, n_pred, ids.size - k)
    d = deepcell_counts(lab, pred)
    matched = int(np.sum(ratio > 0.6))
    assert (d.correct, d.missed, d.gained) == (matched, ids.size - matched, n_pred - matched)
    assert d.splits == d.merges == d.catastrophes == 0


def test_coco_backends_agree_on_perturbed_real_labels():
    rng = np.random.default_rng(0)
    trues, dets = [], []
    for _, lab in CASES[:4]:
        pred = np.roll(lab, (1, 0), (0, 1))
        ids = object_ids(pred)
        drop = rng.choice(ids, size=ids.size // 10, replace=False)
        pred = np.where(np.isin(pred, drop), 0, pred)
        trues.append(lab)
        dets.append((pred, rng.random(object_ids(pred).size)))
    a = evaluate_coco(trues, dets, backend="faster")
    b = evaluate_coco(trues, dets, backend="pycocotools")
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-6)
    assert 0.0 < a["segm_mAP"] < 1.0
