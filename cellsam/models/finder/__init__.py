"""CellFinder: the Anchor DETR cell detector, its matcher and its losses (pure PyTorch)."""

from cellsam.models.finder.anchor_detr import AnchorDetrTransformer
from cellsam.models.finder.cellfinder import CellFinder, group_norm_groups
from cellsam.models.finder.criterion import SetCriterion
from cellsam.models.finder.matcher import HungarianMatcher
from cellsam.models.finder.rcda import MultiheadRCDA

__all__ = [
    "AnchorDetrTransformer",
    "CellFinder",
    "HungarianMatcher",
    "MultiheadRCDA",
    "SetCriterion",
    "group_norm_groups",
]
