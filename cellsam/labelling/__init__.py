"""Human-in-the-loop labelling without a GUI (the CellSAM paper's labelling loop): the
model proposes every cell, a person fixes the rest with box and point prompts and label
edits, and the corrected labels are saved or added to a training set.

- `session`: `LabellingSession` (one image: `segment_all`, `box_prompt`, `point_prompt`,
  `save`, `add_to_training_set`).
- `cell_labels`: `CellLabels`, the session's label image with its per-cell records, prompt
  states and selection (`delete` / `merge` / `renumber`, `set_labels`, the cell table).
- `prompts`: windows, image <-> model coordinates, SAM's prompt decoding, prompt masks.
- `edits`: pure functions on label images (delete, merge, renumber, paint a cell).
- `dataset`: adding an image and its labels to a dataset in the project's format.
- `detector`: prompt-only models on pretrained SAM weights (no CellFinder).

A GUI (the napari widget) calls only this package; nothing here imports Qt.
"""

from cellsam.labelling.cell_labels import CellLabels
from cellsam.labelling.dataset import AddResult, add_to_training_set, image_hash
from cellsam.labelling.detector import (
    NoDetectorError,
    has_detector,
    prompt_only_model,
    prompt_only_predictor,
)
from cellsam.labelling.edits import delete_cells, merge_cells, next_id, paint_cell, renumber
from cellsam.labelling.export import CellInfo
from cellsam.labelling.prompts import PromptResult
from cellsam.labelling.session import LabellingSession

__all__ = ["AddResult", "CellInfo", "CellLabels", "LabellingSession", "NoDetectorError",
           "PromptResult", "add_to_training_set", "delete_cells", "has_detector", "image_hash",
           "merge_cells", "next_id", "paint_cell", "prompt_only_model", "prompt_only_predictor",
           "renumber"]
