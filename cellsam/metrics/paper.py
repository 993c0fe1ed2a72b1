"""The CellSAM paper's published numbers (REFERENCE section 6) and the mapping from our
dataset names to the paper's rows."""

from __future__ import annotations

import re

__all__ = ["PAPER_F1", "PAPER_TEST_IMAGES", "paper_dataset", "paper_f1"]

# REFERENCE section 6: per-image mean F1 at IoU 0.5, from the authors' released evaluation.
# Columns: (test images, CellSAM generalist, Cellpose generalist, CellSAM specialist,
# Cellpose specialist).
_PAPER_ROWS: dict[str, tuple[int, float, float, float, float]] = {
    "DeepBacs": (92, 0.931, 0.912, 0.892, 0.927),
    "BriFiSeg": (22, 0.911, 0.867, 0.842, 0.925),
    "YeaZ": (17, 0.990, 0.990, 0.991, 0.990),
    "YeastNet": (15, 0.995, 0.986, 0.964, 0.997),
    "DSB": (56, 0.894, 0.886, 0.892, 0.888),
    "Cellpose": (68, 0.866, 0.814, 0.887, 0.856),
    "H&E": (51, 0.825, 0.775, 0.744, 0.811),
    "Phase400": (54, 0.926, 0.937, 0.926, 0.938),
    "TissueNet": (330, 0.894, 0.865, 0.894, 0.872),
    "Omnipose": (168, 0.847, 0.838, 0.813, 0.908),
}
#: `PAPER_F1[row][variant] = (CellSAM, Cellpose)`; LIVECell is zero-shot only.
PAPER_F1: dict[str, dict[str, tuple[float, float]]] = {
    name: {"generalist": (g_sam, g_cp), "specialist": (s_sam, s_cp)}
    for name, (_, g_sam, g_cp, s_sam, s_cp) in _PAPER_ROWS.items()
}
PAPER_F1["LIVECell"] = {"zero-shot": (0.499, 0.381)}
PAPER_TEST_IMAGES: dict[str, int] = {k: v[0] for k, v in _PAPER_ROWS.items()} | {"LIVECell": 576}

# Our data config names (and common spellings) -> the paper's row names.
_ALIASES: dict[str, str] = {
    "tissuenet": "TissueNet", "deepbacs": "DeepBacs", "brifiseg": "BriFiSeg",
    "cellpose": "Cellpose", "omnipose": "Omnipose", "yeastnet": "YeastNet", "yeaz": "YeaZ",
    "dsb2018": "DSB", "dsb": "DSB", "nuclear": "DSB", "livecell": "LIVECell",
    "phase400": "Phase400", "he": "H&E", "hande": "H&E", "hestain": "H&E",
}


def paper_dataset(name: str) -> str | None:
    """The paper's row for one of our dataset names (`dsb2018` -> "DSB", `h&e` -> "H&E")."""
    return _ALIASES.get(re.sub(r"[^a-z0-9]", "", name.lower()))


def paper_f1(name: str, variant: str = "generalist") -> tuple[float | None, float | None, str]:
    """`(CellSAM, Cellpose, variant used)` per-image mean F1@0.5 for our dataset `name`;
    `(None, None, variant)` when the paper has no such row. LIVECell is always zero-shot."""
    row = paper_dataset(name)
    if row is None:
        return None, None, variant
    entry = PAPER_F1[row]
    used = variant if variant in entry else next(iter(entry))
    sam, cp = entry[used]
    return sam, cp, used
