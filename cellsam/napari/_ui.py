"""The dock widget's Qt controls and layout (`Controls`); what they do is `_widget`'s."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from cellsam.inference.settings import InferenceSettings

PRETRAINED, CHECKPOINT = "pretrained LiteMedSAM (prompt only)", "checkpoint (CellSAM or SAC)"
# the spin boxes' ranges: InferenceSettings' checks (a negative IoU threshold keeps all)
# box_threshold acts on CellSAM's detector, prompt_threshold on SAC's prompter map; the
# widget disables the one the loaded pipeline does not read
THRESHOLDS = {"box_threshold": (0.0, 1.0), "prompt_threshold": (0.01, 0.99),
              "iou_threshold": (-1.0, 1.0), "mask_threshold": (0.01, 0.99)}


def _button(text: str, slot: Callable[[], object]) -> QPushButton:
    b = QPushButton(text)
    b.clicked.connect(lambda *_: slot())
    return b


def _row(*widgets: QWidget) -> QWidget:
    w, lay = QWidget(), QHBoxLayout()
    lay.setContentsMargins(0, 0, 0, 0)
    for x in widgets:
        lay.addWidget(x)
    w.setLayout(lay)
    return w


class Controls:
    """Builds `widget`'s layout; buttons call `widget`'s methods of the same purpose
    (`load_model`, `segment_all`, `cancel`, `box_prompt`, `draw_boxes`, `point_prompt`,
    `click_points`, `delete_cell`, `renumber`, `merge_cells`, `save`,
    `add_to_training_set`)."""

    def __init__(self, widget: QWidget) -> None:
        w = widget
        model, form = QGroupBox("Model"), QFormLayout()
        self.model_choice = QComboBox()
        self.model_choice.addItems([PRETRAINED, CHECKPOINT])
        self.ckpt_path = QLineEdit()
        self.ckpt_path.setPlaceholderText("outputs/.../sam/checkpoints/last.ckpt")
        self.ckpt_path.textEdited.connect(
            lambda *_: self.model_choice.setCurrentText(CHECKPOINT))
        self.model_label = QLabel("no model loaded")
        self.model_label.setWordWrap(True)
        form.addRow("model", self.model_choice)
        form.addRow("checkpoint", _row(self.ckpt_path, _button("...", self._browse)))
        form.addRow(_button("Load model", w.load_model), self.model_label)
        model.setLayout(form)

        image, form = QGroupBox("Image"), QFormLayout()
        self.image_choice, self.nuclear, self.whole_cell = QComboBox(), QComboBox(), QComboBox()
        form.addRow("image layer", self.image_choice)
        form.addRow("nuclear channel", self.nuclear)
        form.addRow("whole-cell channel", self.whole_cell)
        image.setLayout(form)

        settings, form = QGroupBox("Inference settings (the model's)"), QFormLayout()
        self.thresholds: dict[str, QDoubleSpinBox] = {}
        for name, (lo, hi) in THRESHOLDS.items():
            box = QDoubleSpinBox()
            box.setRange(lo, hi)
            box.setDecimals(3)
            box.setSingleStep(0.05)
            self.thresholds[name] = box
            form.addRow(name.replace("_", " "), box)
        settings.setLayout(form)

        run, form = QGroupBox("Segment and prompt"), QFormLayout()
        self.cancel_button = _button("Cancel", w.cancel)
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.negative = QCheckBox("next clicks negative")
        self.cell = QSpinBox()
        self.cell.setRange(0, 2**31 - 1)
        self.cell.setSpecialValueText("new cell")  # shown for 0
        form.addRow(_row(_button("Segment all", w.segment_all), self.cancel_button))
        form.addRow(self.progress_bar)
        form.addRow(_row(_button("Box prompt (last rectangle)", w.box_prompt),
                         _button("Draw boxes", w.draw_boxes)))
        form.addRow(_row(_button("Point prompt (clicks)", w.point_prompt),
                         _button("Click points", w.click_points)))
        form.addRow(self.negative)
        form.addRow("selected cell", self.cell)
        run.setLayout(form)

        edit, form = QGroupBox("Edit"), QFormLayout()
        self.merge_ids = QLineEdit()
        self.merge_ids.setPlaceholderText("ids, e.g. 3, 4")
        form.addRow(_row(_button("Delete selected", w.delete_cell),
                         _button("Renumber", w.renumber)))
        form.addRow(_row(self.merge_ids, _button("Merge", w.merge_cells)))
        edit.setLayout(form)

        out, form = QGroupBox("Output"), QFormLayout()
        self.out_dir, self.out_name = QLineEdit("cellsam_labels"), QLineEdit()
        self.out_name.setPlaceholderText("the image layer's name")
        self.dataset_dir, self.split = QLineEdit(), QComboBox()
        self.split.addItems(["train", "val", "test"])
        form.addRow("folder", self.out_dir)
        form.addRow("name", self.out_name)
        form.addRow(_button("Save (TIFF + CSV)", w.save))
        form.addRow("dataset", self.dataset_dir)
        form.addRow("split", self.split)
        form.addRow(_button("Add to training set", w.add_to_training_set))
        out.setLayout(form)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay = QVBoxLayout()
        for x in (model, image, settings, run, edit, out, self.status):
            lay.addWidget(x)
        lay.addStretch()
        w.setLayout(lay)
        w.setMaximumWidth(420)  # the viewer's canvas keeps the room
        self.parent = w
        # off while a worker runs: the session takes one call at a time
        self.actions = [b for b in w.findChildren(QPushButton) if b is not self.cancel_button]

    def set_images(self, names: list[str]) -> None:
        """The image layers to choose from (the choice stays while its layer does)."""
        combo, current = self.image_choice, self.image_choice.currentText()
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(names)
        if current in names:
            combo.setCurrentText(current)
        combo.blockSignals(False)

    def set_channel_count(self, n: int) -> None:
        """Channel choices for an image of `n` channels (one: nothing to choose)."""
        for combo, first in ((self.nuclear, "none"), (self.whole_cell, "default")):
            items = [first] + ([str(i) for i in range(n)] if n > 1 else [])
            if [combo.itemText(i) for i in range(combo.count())] == items:
                continue  # same channels (another layer came or went): keep the choice
            combo.clear()
            combo.addItems(items)
            combo.setEnabled(n > 1)

    @staticmethod
    def channel(combo: QComboBox) -> int | None:
        """The chosen channel index, None for the first entry ('none' / 'default')."""
        return int(combo.currentText()) if combo.currentIndex() > 0 else None

    def button(self, text: str) -> QPushButton:
        """The button whose label starts with `text` (tests click it as a person would)."""
        found = [b for b in self.parent.findChildren(QPushButton) if b.text().startswith(text)]
        if len(found) != 1:
            raise KeyError(f"{len(found)} buttons start with {text!r}")
        return found[0]

    def show_settings(self, settings: InferenceSettings, unread: str) -> None:
        """The threshold boxes show `settings`; the box named `unread` (a threshold the
        loaded pipeline does not read) is greyed out."""
        for name, box in self.thresholds.items():
            box.setValue(float(getattr(settings, name)))
            box.setEnabled(name != unread)

    def threshold_values(self) -> dict[str, float]:
        """The values of the boxes that are not greyed out."""
        return {k: box.value() for k, box in self.thresholds.items() if box.isEnabled()}

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.parent, "CellSAM stage-2 or SAC checkpoint", "",
                                              "checkpoints (*.ckpt *.pt);;all files (*)")
        if path:
            self.ckpt_path.setText(path)
            self.model_choice.setCurrentText(CHECKPOINT)
