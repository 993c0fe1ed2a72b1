"""The results figures (matplotlib's Agg canvas, imported lazily: no GUI backend, and
importing the metrics costs nothing when no figure is drawn).

- `bar_chart`: per-image mean F1@0.5 per dataset (ours with its bootstrap interval, then
  the paper's CellSAM and Cellpose numbers): results.png;
- `iou_curve_chart`: F1 (CellSAM) and AP (Cellpose) against the IoU threshold 0.5..0.95,
  one line per dataset: results_iou.png.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bar_chart", "iou_curve_chart"]


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def bar_chart(path: Path, rows: Sequence[Mapping[str, Any]], variant: str, compare: bool
              ) -> None:
    """Grouped bars of per-image mean F1@0.5 per dataset: ours, then the paper's."""
    rows = [r for r in rows if r["dataset"] != "all"] or list(rows)
    series = [("ours", "f1_50_mean", "#1f77b4")]
    if compare:
        series += [(f"CellSAM {variant} (paper)", "paper_cellsam_f1_50_mean", "#ff7f0e"),
                   (f"Cellpose {variant} (paper)", "paper_cellpose_f1_50_mean", "#7f7f7f")]
    x = np.arange(len(rows))
    width = 0.8 / len(series)
    fig = _figure((max(6.0, 1.2 * len(rows) + 2), 4.5))
    ax = fig.add_subplot()
    for k, (label, key, color) in enumerate(series):
        vals = np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])
        yerr = None
        if key == "f1_50_mean" and all((r.get("ci") or {}).get(key) for r in rows):
            lo, hi = np.array([r["ci"][key] for r in rows], np.float64).T
            yerr = np.nan_to_num(np.stack([vals - lo, hi - vals]).clip(min=0))
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, np.nan_to_num(vals), width,
                      label=label + (" (bootstrap CI)" if yerr is not None else ""),
                      color=color, yerr=yerr, capsize=2)
        ax.bar_label(bars, ["" if np.isnan(v) else f"{v:.2f}" for v in vals], fontsize=6)
    ticks = [r["dataset"] + (f"\n({r['paper_variant']})" if compare and r.get("paper_variant")
                             not in (None, variant) else "") for r in rows]
    ax.set_xticks(x, ticks, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1 at IoU 0.5 (per-image mean)")
    ax.set_title("F1@0.5 (CellSAM), per-image mean per dataset")
    # Legend above the axes: inside, it would hide bars near 1.0.
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=len(series),
              fontsize="small", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def iou_curve_chart(path: Path, curves: Mapping[str, Mapping[str, Sequence[float]]]) -> None:
    """Two panels, F1 (CellSAM, per-image mean) and AP (Cellpose, per-image mean) against
    the IoU threshold; one line per dataset (`all` dashed when there are several)."""
    names = [n for n in curves if n != "all"] or list(curves)
    if len(names) > 1 and "all" in curves:
        names.append("all")
    fig = _figure((10.0, 4.2))
    panels = (("f1_mean", "F1 (CellSAM), per-image mean"),
              ("cellpose_ap", "AP = TP / (TP + FP + FN) (Cellpose), per-image mean"))
    for k, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        for name in names:
            c = curves[name]
            ax.plot(c["iou"], np.asarray(c[key], np.float64), marker="o", markersize=3,
                    label=name, linestyle="--" if name == "all" else "-")
        ax.set_xlabel("IoU threshold")
        ax.set_xlim(0.48, 0.97)
        ax.set_ylim(0, 1.02)
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
