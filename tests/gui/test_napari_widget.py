"""The napari dock widget (`cellsam.napari`) in a real viewer (napari's `make_napari_viewer`,
a virtual X display in CI): every button next to the plain-Python `LabellingSession` doing
the same, on a tiny random CellSAM checkpoint.

Skipped without napari or a display; with CELLSAM_REQUIRE_GUI=1 (CI) that is an error.
"""

from __future__ import annotations

import csv
import importlib
import os
from pathlib import Path

import numpy as np
import pytest


def _gui_missing() -> str | None:
    try:
        import napari  # noqa: F401
        import pytestqt  # noqa: F401
    except ImportError as e:
        return f"the napari extra is not installed ({e}): pip install -e .[napari]"
    if not os.environ.get("DISPLAY") and os.environ.get("QT_QPA_PLATFORM") != "offscreen":
        return "no display: run under xvfb-run (DISPLAY is unset)"
    return None


_missing = _gui_missing()
if _missing is not None:
    if os.environ.get("CELLSAM_REQUIRE_GUI") == "1":
        raise RuntimeError(f"CELLSAM_REQUIRE_GUI=1 but the GUI tests cannot run: {_missing}")
    pytest.skip(_missing, allow_module_level=True)

from fake_checkpoints import write_checkpoint  # noqa: E402

from cellsam.labelling import LabellingSession  # noqa: E402
from cellsam.napari._layers import rectangle_to_box  # noqa: E402
from cellsam.napari._ui import CHECKPOINT  # noqa: E402
from cellsam.napari._widget import BOXES, LABELS, POINTS, CellSAMWidget  # noqa: E402

MANIFEST = Path(importlib.import_module("cellsam.napari").__file__).with_name("napari.yaml")
# a random CellFinder scores near its prior: open the thresholds (the checkpoint's own
# values, which the widget must show) so that Segment all decodes cells at all
OPEN = {"box_threshold": 0.0, "iou_threshold": 0.0, "max_detections": 12, "min_area": 4}
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", inference=OPEN)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    from cellsam.data.synthetic import generate_sample

    img, _ = generate_sample("culture", 12, seed=3, size=256)
    return img  # [3, 256, 256]: napari shows a stack, the widget offers 3 channels


def wait(qtbot, widget: CellSAMWidget) -> None:
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def click(qtbot, widget: CellSAMWidget, text: str) -> None:
    widget.ui.button(text).click()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.ui.status.text()


def open_widget(make_napari_viewer, qtbot, image, ckpt) -> tuple:
    viewer = make_napari_viewer()
    viewer.add_image(image, name="culture")
    widget = CellSAMWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.ui.nuclear.setCurrentText("1")
    widget.ui.whole_cell.setCurrentText("2")
    widget.ui.ckpt_path.setText(str(ckpt))
    widget.ui.model_choice.setCurrentText(CHECKPOINT)
    click(qtbot, widget, "Load model")
    return viewer, widget


def test_manifest_validates_and_names_the_widget():
    import npe2

    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "cellsam"
    (widget,) = manifest.contributions.widgets
    (command,) = [c for c in manifest.contributions.commands if c.id == widget.command]
    module, _, attr = command.python_name.partition(":")
    assert getattr(importlib.import_module(module), attr) is CellSAMWidget
    pm = npe2.PluginManager()  # the installed entry point finds the same manifest
    pm.discover()
    assert pm.get_manifest("cellsam").contributions.widgets[0].command == widget.command


def test_plugin_menu_opens_the_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("cellsam", "CellSAM labelling")
    assert isinstance(widget, CellSAMWidget)


def test_widget_does_what_the_session_does(make_napari_viewer, qtbot, image, ckpt, tmp_path):
    import tifffile

    from cellsam.data.format import open_split

    viewer, widget = open_widget(make_napari_viewer, qtbot, image, ckpt)
    # the threshold boxes show the checkpoint's settings; SAC's prompt threshold is greyed out
    assert {k: b.value() for k, b in widget.ui.thresholds.items()} == {
        "box_threshold": 0.0, "prompt_threshold": 0.5, "iou_threshold": 0.0,
        "mask_threshold": 0.5}
    assert [k for k, b in widget.ui.thresholds.items() if not b.isEnabled()] == [
        "prompt_threshold"]
    ref = LabellingSession.from_checkpoint(ckpt, image, device="cpu",
                                           channels={"nuclear": 1, "whole_cell": 2})

    widget.ui.button("Segment all").click()
    assert widget.worker is not None  # the click returns at once: the run is in a worker
    wait(qtbot, widget)
    assert widget.last_error is None, widget.ui.status.text()
    pred = ref.segment_all()
    np.testing.assert_array_equal(widget.session.prepared, ref.prepared)  # channels 1 and 2
    layer = viewer.layers[LABELS]
    assert pred.num_cells >= 4 and layer.data.shape == (256, 256)
    np.testing.assert_array_equal(layer.data, ref.labels)
    assert layer.features["index"].tolist() == list(range(1, pred.num_cells + 1))
    np.testing.assert_allclose(layer.features["score"], pred.scores, rtol=1e-6)
    assert widget.ui.progress_bar.value() == widget.ui.progress_bar.maximum() == 1

    # Cancel: the run stops at its next progress report and the labels stay
    before = layer.data.copy()
    widget.ui.thresholds["box_threshold"].setValue(0.5)
    widget.ui.button("Segment all").click()
    widget.ui.cancel_button.click()
    wait(qtbot, widget)
    assert "cancelled" in widget.ui.status.text()
    np.testing.assert_array_equal(layer.data, before)
    widget.ui.thresholds["box_threshold"].setValue(0.0)

    # Box prompt: napari (row, col) vertices of rows 40..90, columns 100..160
    widget.ui.button("Draw boxes").click()
    rect = np.array([[40, 100], [40, 160], [90, 160], [90, 100]], float)
    viewer.layers[BOXES].add_rectangles(rect)
    click(qtbot, widget, "Box prompt")
    r = ref.box_prompt(rectangle_to_box(rect))
    assert r.cell_id == pred.num_cells + 1 and widget.ui.cell.value() == r.cell_id
    np.testing.assert_array_equal(layer.data, ref.labels)
    # the new id lies in the box (100.5, 40.5, 160.5, 90.5) grown by half its size + 2 px
    # (mask_margin 0.5): x 68.5..192.5, y 13.5..117.5
    ys, xs = np.nonzero(layer.data == r.cell_id)
    assert ys.size > 0 and ys.min() >= 13 and ys.max() <= 117
    assert xs.min() >= 68 and xs.max() <= 192
    assert layer.features["origin"].tolist()[-1] == "box"

    # a negative click inside the new cell refines it
    widget.ui.negative.setChecked(True)
    widget.ui.button("Click points").click()
    cy, cx = int(np.median(ys)), int(np.median(xs))
    viewer.layers[POINTS].add([cy, cx])
    assert viewer.layers[POINTS].features["positive"].tolist() == [False]
    click(qtbot, widget, "Point prompt")
    ref.point_prompt([[cx, cy]], [0], cell_id=r.cell_id, keep_previous=False)
    np.testing.assert_array_equal(layer.data, ref.labels)
    assert layer.data[cy, cx] != r.cell_id

    # what the person paints goes back to the session before the next operation
    painted = layer.data.copy()
    painted[:6, :6] = 90
    layer.data = painted
    ref.set_labels(painted)

    # edits
    widget.ui.cell.setValue(2)
    click(qtbot, widget, "Delete selected")
    ref.delete(2)
    np.testing.assert_array_equal(layer.data, ref.labels)
    widget.ui.merge_ids.setText("1, 3")
    click(qtbot, widget, "Merge")
    assert ref.merge([1, 3]) == 1 == widget.ui.cell.value()
    np.testing.assert_array_equal(layer.data, ref.labels)
    click(qtbot, widget, "Renumber")
    ref.renumber()
    np.testing.assert_array_equal(layer.data, ref.labels)
    assert layer.data.max() == len(np.unique(layer.data)) - 1
    origins = dict(zip(layer.features["index"], layer.features["origin"]))
    assert origins[1] == "merge" and origins[int(layer.data.max())] == "labels"  # the painted

    # Save: the files the session writes
    widget.ui.out_dir.setText(str(tmp_path / "widget"))
    widget.ui.out_name.setText("culture")
    click(qtbot, widget, "Save")
    ref.save(tmp_path / "ref", "culture")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "widget" / "culture.tif"),
                                  tifffile.imread(tmp_path / "ref" / "culture.tif"))
    rows = [list(csv.reader((tmp_path / d / "culture.csv").read_text().splitlines()))
            for d in ("widget", "ref")]
    assert rows[0] == rows[1] and len(rows[0]) == 1 + int(layer.data.max())

    # Add to training set, twice: one image (replaced), the arrays the session writes
    widget.ui.dataset_dir.setText(str(tmp_path / "mine"))
    ref.add_to_training_set(tmp_path / "ref_set", "culture")
    want = open_split(tmp_path / "ref_set", "train", validate=True)
    for _ in range(2):
        click(qtbot, widget, "Add to training set")
        data = open_split(tmp_path / "mine", "train", validate=True)
        assert len(data) == 1 and data.labels.max() > 0
        np.testing.assert_array_equal(data.images, want.images)
        np.testing.assert_array_equal(data.labels, want.labels)


def test_prompt_only_litemedsam(make_napari_viewer, qtbot, image, ckpt):
    """The default model choice: the packaged LiteMedSAM, boxes only."""
    viewer, widget = open_widget(make_napari_viewer, qtbot, image, ckpt)
    widget.ui.button("Box prompt").click()  # no rectangle yet: a message and the layer
    assert "draw a rectangle" in widget.ui.status.text() and BOXES in viewer.layers
    assert viewer.layers[BOXES].mode == "add_rectangle"

    widget.ui.model_choice.setCurrentText("pretrained LiteMedSAM (prompt only)")
    click(qtbot, widget, "Load model")
    assert "prompt only" in widget.ui.model_label.text()
    # the paper preset's thresholds: a prompt-only model has no checkpoint settings
    assert {k: b.value() for k, b in widget.ui.thresholds.items()} == {
        "box_threshold": 0.4, "prompt_threshold": 0.5, "iou_threshold": 0.4,
        "mask_threshold": 0.5}
    widget.ui.button("Segment all").click()
    wait(qtbot, widget)
    assert type(widget.last_error).__name__ == "NoDetectorError"
    assert "prompt-only" in widget.ui.status.text() and LABELS not in viewer.layers

    rect = np.array([[60, 60], [60, 120], [110, 120], [110, 60]], float)
    viewer.layers[BOXES].add_rectangles(rect)
    click(qtbot, widget, "Box prompt")
    ref = LabellingSession.prompt_only(image, device="cpu",
                                       channels={"nuclear": 1, "whole_cell": 2})
    r = ref.box_prompt(rectangle_to_box(rect))
    assert r.cell_id == 1
    np.testing.assert_array_equal(viewer.layers[LABELS].data, ref.labels)


def test_sac_checkpoint_proposes_cells_and_takes_prompts(make_napari_viewer, qtbot, image,
                                                         tmp_path):
    """A SAC checkpoint: its prompter proposes the cells, the box threshold (CellFinder's) is
    greyed out and the prompt threshold acts; Segment all and a box prompt give what the
    plain-Python session gives."""
    sac = write_checkpoint(tmp_path / "sac.ckpt", stage="sac",
                           inference={"iou_threshold": -1.0, "min_area": 4})
    viewer, widget = open_widget(make_napari_viewer, qtbot, image, sac)
    boxes = widget.ui.thresholds
    assert not boxes["box_threshold"].isEnabled() and boxes["prompt_threshold"].isEnabled()
    assert "prompt only" not in widget.ui.model_label.text()
    ref = LabellingSession.from_checkpoint(sac, image, device="cpu",
                                           channels={"nuclear": 1, "whole_cell": 2})
    # a random prompter's map is low everywhere: threshold it at its 85th percentile
    fg, _, _ = ref.predictor.prompt_inputs(ref.predictor.to_input([ref.prepared]))
    threshold = round(float(np.quantile(fg, 0.85)), 3)
    boxes["prompt_threshold"].setValue(threshold)
    ref.configure(prompt_threshold=threshold)

    click(qtbot, widget, "Segment all")
    pred = ref.segment_all()
    assert pred.num_cells >= 2
    np.testing.assert_array_equal(viewer.layers[LABELS].data, ref.labels)
    assert widget.session.predictor.settings.prompt_threshold == threshold

    widget.ui.button("Box prompt").click()  # makes the rectangles layer
    rect = np.array([[60, 60], [60, 120], [110, 120], [110, 60]], float)
    viewer.layers[BOXES].add_rectangles(rect)
    click(qtbot, widget, "Box prompt")
    r = ref.box_prompt(rectangle_to_box(rect))
    assert r.cell_id == pred.num_cells + 1
    np.testing.assert_array_equal(viewer.layers[LABELS].data, ref.labels)


def test_tiled_segment_all_shows_progress(make_napari_viewer, qtbot, image, tmp_path):
    tiled = {**OPEN, "tile_limit": 128, "tile_size": 128, "tile_batch_size": 4}
    ckpt = write_checkpoint(tmp_path / "tiled.ckpt", inference=tiled)
    viewer, widget = open_widget(make_napari_viewer, qtbot, image, ckpt)
    seen: list[tuple[int, int]] = []
    widget.progressed.connect(lambda done, total: seen.append((done, total)))
    click(qtbot, widget, "Segment all")
    ref = LabellingSession.from_checkpoint(ckpt, image, device="cpu",
                                           channels={"nuclear": 1, "whole_cell": 2})
    ref_seen: list[tuple[int, int]] = []
    ref.segment_all(progress=lambda done, total: ref_seen.append((done, total)))
    # tiles of 128 with 25 % overlap over 256 px: starts 0, 96, 128 -> 9 tiles, batches of 4
    assert seen == ref_seen == [(4, 9), (8, 9), (9, 9)]
    assert widget.ui.progress_bar.value() == widget.ui.progress_bar.maximum() == 9
    np.testing.assert_array_equal(viewer.layers[LABELS].data, ref.labels)
