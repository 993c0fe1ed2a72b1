"""`CellLabels`: a label image being edited, with what is known of each of its cells.

The label image `labels` `[H, W]` int32 (0 = background), a `CellInfo` per cell id (score,
predicted IoU, prompt box, origin), the prompt state of each cell prompted in this session
(what a later click refines) and the `selected` cell. Every edit keeps the four consistent:
a cell that leaves the labels leaves the records, a renumbering renumbers them all. The
pixel work is `edits`' pure functions; `LabellingSession` adds the model and the prompts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from cellsam.inference.predictor import Prediction
from cellsam.labelling import edits
from cellsam.labelling.export import CellInfo, cell_features, labels_to_prediction
from cellsam.labelling.prompts import PromptState


class CellLabels:
    """A label image `[H, W]` of `shape` and its per-cell records; `labels`: a starting
    label image (default empty)."""

    def __init__(self, shape: tuple[int, int], labels: np.ndarray | None = None) -> None:
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.labels = np.zeros(self.shape, np.int32)
        self.cells: dict[int, CellInfo] = {}
        self.selected: int | None = None
        self._prompts: dict[int, PromptState] = {}
        if labels is not None:
            self.set_labels(labels)

    def select(self, cell_id: int | None) -> None:
        """The cell that point prompts refine (None: the next clicks make a new cell)."""
        if cell_id is not None and not (self.labels == cell_id).any():
            raise KeyError(f"cell {cell_id} is not in the labels")
        self.selected = cell_id

    def cell_at(self, x: float, y: float) -> int | None:
        """The cell under a point (x, y pixel centre), None on background."""
        c, r = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        if not (0 <= r < self.shape[0] and 0 <= c < self.shape[1]):
            return None
        v = int(self.labels[r, c])
        return v or None

    def delete(self, ids: int | Iterable[int]) -> None:
        """Remove cells (absent ids are ignored)."""
        ids = [int(ids)] if isinstance(ids, (int, np.integer)) else [int(i) for i in ids]
        self.labels = edits.delete_cells(self.labels, ids)
        self._forget(ids)

    def merge(self, ids: Iterable[int], into: int | None = None) -> int:
        """Make cells one (id `into`, default the smallest); returns its id."""
        ids = sorted({int(i) for i in ids})
        self.labels = edits.merge_cells(self.labels, ids, into)
        target = min(ids) if into is None else int(into)
        scores = [self.cells[i].score for i in ids if i in self.cells]
        score = max((s for s in scores if not math.isnan(s)), default=math.nan)
        self._forget([*ids, target])
        self.cells[target] = CellInfo(score, math.nan, None, "merge")
        self.selected = target
        return target

    def renumber(self) -> dict[int, int]:
        """Ids renumbered 1..N in their order; returns old id -> new id."""
        self.labels, mapping = edits.renumber(self.labels)
        self.cells = {mapping[i]: c for i, c in self.cells.items() if i in mapping}
        self._prompts = {mapping[i]: s for i, s in self._prompts.items() if i in mapping}
        self.selected = mapping.get(self.selected) if self.selected is not None else None
        return mapping

    def set_labels(self, labels: np.ndarray) -> None:
        """Take a label image `[H, W]` edited elsewhere (a viewer's brush): cells that are
        gone are forgotten, new ids get `origin="labels"`, and the prompt state of every cell
        whose pixels changed is dropped."""
        labels = np.asarray(labels)
        if labels.shape != self.shape or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be integers of shape {self.shape}, got "
                             f"{labels.dtype} {labels.shape}")
        new = labels.astype(np.int32)
        changed = set(np.unique(self.labels[self.labels != new]).tolist())
        changed |= set(np.unique(new[self.labels != new]).tolist())
        self.labels = new
        present = set(edits.cell_areas(new))
        self._forget([i for i in list(self.cells) if i not in present])
        for i in changed - {0}:
            self._prompts.pop(int(i), None)
        for i in present - set(self.cells):
            self.cells[i] = CellInfo()
        if self.selected is not None and self.selected not in present:
            self.selected = None

    def _forget(self, ids: Iterable[int]) -> None:
        for i in ids:
            self.cells.pop(int(i), None)
            self._prompts.pop(int(i), None)
            if self.selected == int(i):
                self.selected = None

    # -- tables --------------------------------------------------------------------------------
    def features(self) -> dict[str, np.ndarray]:
        """Per-cell table, one row per present id (napari's Labels `features`; see
        `export.cell_features`)."""
        return cell_features(self.labels, self.cells)

    def to_prediction(self) -> Prediction:
        """The labels as a `Prediction`, ids renumbered 1..N (the session's ids are left
        alone): what `predict.py`'s writers take."""
        return labels_to_prediction(self.labels, self.cells)


__all__ = ["CellLabels"]
