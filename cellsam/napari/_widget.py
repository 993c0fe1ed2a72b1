"""`CellSAMWidget`: napari's dock widget over `cellsam.labelling.LabellingSession`.

Layers it owns: "cellsam labels" (the session's labels, per-cell table as `features`),
"cellsam boxes" (the last rectangle is the box prompt) and "cellsam points" (clicks,
feature `positive` True/False). Model loading and every prompt run in a napari thread
worker (the session is not thread-safe, so the buttons are off while one runs); edits
are immediate. Whatever the person painted in the labels layer goes back to the session
before each operation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QLineEdit, QWidget

from cellsam.inference.predictor import CellSAMPredictor
from cellsam.inference.sac_predictor import SACPredictor, predictor_from_checkpoint
from cellsam.labelling import LabellingSession, has_detector, prompt_only_predictor
from cellsam.napari import _layers
from cellsam.napari._ui import CHECKPOINT, Controls

LABELS, BOXES, POINTS = "cellsam labels", "cellsam boxes", "cellsam points"
POSITIVE_COLOUR, NEGATIVE_COLOUR = "lime", "magenta"


class Cancelled(Exception):
    """Raised by the progress callback after Cancel: the session stays as it was."""


class CellSAMWidget(QWidget):
    progressed = Signal(int, int)  # (done, total) from the worker thread, shown here

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.predictor: CellSAMPredictor | None = None
        self.session: LabellingSession | None = None
        self.worker = None
        self.last_error: BaseException | None = None
        self._key: tuple | None = None  # (image layer, model number, channels) of `session`
        self._models = 0  # models loaded so far
        self._cancel = threading.Event()
        self._pbar = None
        self.ui = Controls(self)
        self.ui.image_choice.currentTextChanged.connect(lambda *_: self._refresh_channels())
        self.ui.negative.toggled.connect(lambda *_: self._style_points())
        self.ui.cell.valueChanged.connect(self._cell_changed)
        self.progressed.connect(self._on_progress)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self._refresh_images()

    # -- image layer and channels -------------------------------------------------------------
    def _refresh_images(self, *_: Any) -> None:
        self.ui.set_images([x.name for x in self.viewer.layers if isinstance(x, Image)])
        self._refresh_channels()

    def _refresh_channels(self) -> None:
        layer = self.image_layer(required=False)
        n = 1
        if layer is not None:
            try:
                n = _layers.image_layout(layer.data.shape, layer.rgb)[0]
            except ValueError:
                n = 0
        self.ui.set_channel_count(n)

    def image_layer(self, required: bool = True) -> Image | None:
        name = self.ui.image_choice.currentText()
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Image):
            return self.viewer.layers[name]
        if required:
            raise ValueError("open an image (an Image layer) and choose it under 'image layer'")
        return None

    def channels(self) -> dict[str, int] | None:
        return _layers.channel_map(self.ui.channel(self.ui.nuclear),
                                   self.ui.channel(self.ui.whole_cell))

    # -- model ------------------------------------------------------------------------------------
    def load_model(self) -> None:
        """Load the chosen model in a worker; its settings fill the threshold boxes."""
        path = self.ui.ckpt_path.text().strip()
        if self.ui.model_choice.currentText() == CHECKPOINT:
            if not path:
                return self._say("enter a checkpoint path (CellSAM stage 2 or SAC)")

            def load():
                return predictor_from_checkpoint(path, device="auto")  # CellSAM or SAC
            label = Path(path).name
        else:
            load, label = prompt_only_predictor, "LiteMedSAM"
        self._run(load, lambda p: self.set_predictor(p, label), f"loading {label}")

    def set_predictor(self, predictor: CellSAMPredictor, label: str = "") -> None:
        """Use `predictor` from now on (a new session on the next operation)."""
        self.predictor = predictor
        self._models += 1
        self.ui.show_settings(predictor.settings, "box_threshold" if isinstance(
            predictor, SACPredictor) else "prompt_threshold")
        if not has_detector(predictor.model):
            label += " (prompt only: boxes and clicks)"
        self.ui.model_label.setText(label)
        self._say(f"model ready: {label}")

    # -- session and layers ---------------------------------------------------------------------
    def ensure_session(self) -> LabellingSession:
        """The session of the chosen image, channels and model (made when one changed),
        with the labels layer's edits and the threshold boxes' values applied."""
        if self.predictor is None:
            raise ValueError("load a model first ('Load model')")
        layer = self.image_layer()
        data = np.asarray(layer.data[0] if layer.multiscale else layer.data)
        n, axis = _layers.image_layout(data.shape, layer.rgb)
        channels = self.channels()
        key = (id(layer), self._models, str(channels))
        if self.session is None or key != self._key:
            # a new model or channels keep the labels of the same image, a new image starts empty
            same_image = self._key is None or self._key[0] == id(layer)
            labels = self._layer_labels(data.shape[:2] if axis != 0 else data.shape[1:])
            self.session = LabellingSession(self.predictor, data, channels, axis,
                                            labels=labels if same_image else None)
            self._key = key
        else:
            self.pull_labels()
        wanted = self.ui.threshold_values()
        if any(getattr(self.session.predictor.settings, k) != v for k, v in wanted.items()):
            self.session.configure(**wanted)
        return self.session

    def _layer_labels(self, shape) -> np.ndarray | None:
        if LABELS in self.viewer.layers:
            data = np.asarray(self.viewer.layers[LABELS].data)
            if data.shape == tuple(shape):
                return data
        return None

    def pull_labels(self) -> None:
        """Hand what the person painted in the labels layer to the session."""
        if self.session is not None and LABELS in self.viewer.layers:
            data = np.asarray(self.viewer.layers[LABELS].data)
            if data.shape == self.session.shape and not np.array_equal(data,
                                                                         self.session.labels):
                self.session.set_labels(data)

    def push_labels(self) -> None:
        """Show the session's labels and per-cell table in the labels layer."""
        s = self.session
        if s is None:
            return
        features = s.features()
        if LABELS in self.viewer.layers:
            layer = self.viewer.layers[LABELS]
            layer.data = s.labels.copy()
            layer.features = features
        else:
            image = self.image_layer()
            layer = self.viewer.add_labels(s.labels.copy(), name=LABELS, features=features,
                                           scale=image.scale[-2:], translate=image.translate[-2:])
            layer.events.selected_label.connect(self._picked_label)
        self._set_cell(s.selected or 0)

    def _prompt_layer(self, name: str):
        """The boxes or points layer, made (on the image's grid) when missing."""
        if name in self.viewer.layers:
            return self.viewer.layers[name]
        image = self.image_layer()
        grid = {"scale": image.scale[-2:], "translate": image.translate[-2:], "name": name}
        if name == BOXES:
            return self.viewer.add_shapes(ndim=2, edge_color="yellow", face_color="transparent",
                                          edge_width=2, **grid)
        layer = self.viewer.add_points(ndim=2, features={"positive": np.zeros(0, bool)},
                                       size=7, **grid)
        self._style_points(layer)
        return layer

    def draw_boxes(self) -> None:
        layer = self._prompt_layer(BOXES)
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"

    def click_points(self) -> None:
        layer = self._prompt_layer(POINTS)
        self.viewer.layers.selection.active = layer
        layer.mode = "add"

    def _style_points(self, layer=None) -> None:
        if layer is None:
            if POINTS not in self.viewer.layers:
                return
            layer = self.viewer.layers[POINTS]
        positive = not self.ui.negative.isChecked()
        layer.feature_defaults = {"positive": positive}
        layer.current_face_color = POSITIVE_COLOUR if positive else NEGATIVE_COLOUR

    def _clear_points(self) -> None:
        if POINTS in self.viewer.layers:
            layer = self.viewer.layers[POINTS]
            if len(layer.data):
                layer.data = np.zeros((0, 2))

    def _set_cell(self, cell_id: int) -> None:
        self.ui.cell.setValue(int(cell_id))
        if cell_id and LABELS in self.viewer.layers:
            self.viewer.layers[LABELS].selected_label = int(cell_id)

    def _cell_changed(self, value: int) -> None:
        self._clear_points()  # clicks belong to the cell they refined
        if self.session is not None and value and (self.session.labels == value).any():
            self.session.select(value)

    def _picked_label(self, *_: Any) -> None:
        self.ui.cell.setValue(int(self.viewer.layers[LABELS].selected_label))

    # -- operations -----------------------------------------------------------------------------
    def segment_all(self) -> None:
        """Every cell the model finds, in a worker with progress and Cancel."""
        if self.worker is not None:
            return self._say("busy: wait for the running operation (or Cancel)")
        try:
            s = self.ensure_session()
        except Exception as e:
            return self._failed(e)
        self._cancel.clear()
        self._pbar = napari_progress(total=1, desc="CellSAM segment all")
        self.ui.progress_bar.setValue(0)

        def report(done: int, total: int) -> None:
            if self._cancel.is_set():
                raise Cancelled("Segment all cancelled; the labels are as they were")
            self.progressed.emit(done, total)

        self._run(lambda: s.segment_all(progress=report),
                  lambda pred: self._done(f"Segment all: {pred.num_cells} cells"),
                  "segment all")
        self.ui.cancel_button.setEnabled(True)

    def cancel(self) -> None:
        self._cancel.set()
        self._say("cancelling ...")

    def box_prompt(self) -> None:
        """Segment the last rectangle of the boxes layer as a new cell."""
        try:
            s = self.ensure_session()
            layer = self.viewer.layers[BOXES] if BOXES in self.viewer.layers else None
            if layer is None or not len(layer.data):
                self.draw_boxes()
                raise ValueError(f"draw a rectangle in the '{BOXES}' layer first")
            if layer.shape_type[-1] != "rectangle":
                raise ValueError(f"the last shape of '{BOXES}' is a {layer.shape_type[-1]}, "
                                 "not a rectangle")
            image = self.image_layer()
            rc = _layers.to_image_rc(layer.data[-1], layer.scale, layer.translate,
                                     image.scale, image.translate)
            box = _layers.rectangle_to_box(rc)
        except Exception as e:
            return self._failed(e)
        self._clear_points()
        self._run(lambda: s.box_prompt(box), self._prompted, "box prompt")

    def point_prompt(self) -> None:
        """Refine the selected cell (none: make a new one) with the points layer's clicks."""
        try:
            s = self.ensure_session()
            layer = self.viewer.layers[POINTS] if POINTS in self.viewer.layers else None
            if layer is None or not len(layer.data):
                self.click_points()
                raise ValueError(f"click points in the '{POINTS}' layer first")
            image = self.image_layer()
            xy = _layers.points_to_xy(_layers.to_image_rc(layer.data, layer.scale,
                                                          layer.translate, image.scale,
                                                          image.translate))
            positive = (np.asarray(layer.features["positive"], bool)
                        if "positive" in layer.features else np.ones(len(xy), bool))
            target = self.ui.cell.value() or None
            if target is not None and not (s.labels == target).any():
                target = None  # an id without pixels (napari's "new label"): a new cell
        except Exception as e:
            return self._failed(e)
        self._run(lambda: s.point_prompt(xy, positive.astype(int), cell_id=target,
                                         keep_previous=False), self._prompted, "point prompt")

    def _prompted(self, result) -> None:
        if result.cell_id is None:
            return self._done("the prompt found no cell (try a larger box or lower the mask "
                              "threshold)")
        self._done(f"cell {result.cell_id}: {int(result.mask.sum())} pixels, predicted IoU "
                   f"{result.iou:.2f}", keep_points=True)

    def delete_cell(self) -> None:
        def delete(s: LabellingSession) -> str:
            cell = self.ui.cell.value()
            if not cell:
                raise ValueError("select a cell to delete ('selected cell')")
            s.delete(cell)
            return f"deleted cell {cell}"
        self._edit(delete)

    def merge_cells(self) -> None:
        def merge(s: LabellingSession) -> str:
            ids = _layers.parse_ids(self.ui.merge_ids.text())
            if len(ids) < 2:
                raise ValueError("give two or more cell ids to merge, e.g. '3, 4'")
            return f"merged {ids} into {s.merge(ids)}"
        self._edit(merge)

    def renumber(self) -> None:
        self._edit(lambda s: f"renumbered: {len(s.renumber())} cells")

    def _edit(self, fn: Callable[[LabellingSession], str]) -> None:
        self.last_error = None
        try:
            self._done(fn(self.ensure_session()))
        except Exception as e:
            self._failed(e)

    def save(self) -> None:
        """`<folder>/<name>.tif` and `.csv` as predict.py writes them."""
        try:
            s, name = self.ensure_session(), self._name(self.ui.out_name)
            folder = self.ui.out_dir.text().strip() or "."
        except Exception as e:
            return self._failed(e)
        self._run(lambda: s.save(folder, name),
                  lambda paths: self._say("saved " + ", ".join(str(p) for p in paths)), "save")

    def add_to_training_set(self) -> None:
        """Add the image and its labels to the dataset (the same image again replaces it)."""
        try:
            s, name = self.ensure_session(), self._name(self.ui.out_name)
            folder = self.ui.dataset_dir.text().strip()
            if not folder:
                raise ValueError("enter the dataset folder under 'dataset'")
        except Exception as e:
            return self._failed(e)
        split = self.ui.split.currentText()
        self._run(lambda: s.add_to_training_set(folder, name, split=split),
                  lambda r: self._say(f"added {r.n_objects} cells ({len(r.names)} tile(s)) to "
                                      f"{folder}/{split}" + (" in place of the earlier copy"
                                                             if r.replaced else "")),
                  "add to training set")

    def _name(self, field: QLineEdit) -> str:
        return field.text().strip() or self.image_layer().name

    # -- running --------------------------------------------------------------------------------
    def _run(self, fn: Callable[[], Any], on_done: Callable[[Any], None], what: str) -> None:
        if self.worker is not None:
            return self._say("busy: wait for the running operation (or Cancel)")
        self.last_error = None
        worker = create_worker(fn, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(on_done)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._finished)
        self.worker = worker
        for b in self.ui.actions:
            b.setEnabled(False)
        self._say(f"{what} ...")
        worker.start()

    def _finished(self) -> None:
        self.worker = None
        for b in self.ui.actions:
            b.setEnabled(True)
        self.ui.cancel_button.setEnabled(False)
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def _on_progress(self, done: int, total: int) -> None:
        self.ui.progress_bar.setRange(0, max(total, 1))
        self.ui.progress_bar.setValue(done)
        if self._pbar is not None:
            self._pbar.total = max(total, 1)
            self._pbar.update(done - self._pbar.n)

    def _done(self, message: str, keep_points: bool = False) -> None:
        self.push_labels()
        if not keep_points:
            self._clear_points()
        self._say(message)

    def _failed(self, error: BaseException) -> None:
        self.last_error = error
        self._say(str(error) if isinstance(error, Cancelled)
                  else f"{type(error).__name__}: {error}")

    def _say(self, message: str) -> None:
        self.ui.status.setText(message)
        self.viewer.status = f"cellsam: {message}"
