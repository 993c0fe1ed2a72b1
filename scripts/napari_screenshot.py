"""A screenshot of napari with cellsam's dock widget on a real image (the README's picture).

The image: the DSB 2018 fluorescence image the box-prompt benchmark uses (512 x 512 crop,
`experiments/benchmarks/bench_box_prompt.py`). With `--ckpt` the widget loads that stage-2
checkpoint and runs Segment all; without one it loads the packaged LiteMedSAM (prompt
only) and box-prompts the true nuclei's boxes, one rectangle each, through the widget's
Box prompt. Needs the napari extra and a display (e.g. `xvfb-run -a`):

    xvfb-run -a python scripts/napari_screenshot.py docs/napari_screenshot.png
    xvfb-run -a python scripts/napari_screenshot.py shot.png --ckpt outputs/.../last.ckpt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments" / "benchmarks"))
from bench_box_prompt import DEFAULT_DATA, load_image  # noqa: E402


def wait(widget, timeout: float = 600.0) -> None:
    """Let Qt run until the widget's worker is done; raise what it failed with."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while widget.worker is not None:
        if time.monotonic() > end:
            raise TimeoutError(f"the widget's operation ran over {timeout} s")
        QApplication.processEvents()
        time.sleep(0.01)
    QApplication.processEvents()
    if widget.last_error is not None:
        raise RuntimeError(widget.ui.status.text()) from widget.last_error


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="PNG to write")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dsb2018_fixed folder")
    ap.add_argument("--ckpt", default=None, help="stage-2 checkpoint (default: prompt only)")
    ap.add_argument("--boxes", type=int, default=1000, help="prompt-only: at most this many")
    ap.add_argument("--size", type=int, nargs=2, default=(1280, 760), help="window w h")
    args = ap.parse_args()

    import napari
    from imageio.v3 import imwrite
    from skimage.transform import resize

    from cellsam.napari._widget import BOXES, LABELS, CellSAMWidget
    from cellsam.ops.masks import label_boxes_xyxy

    name, image, truth = load_image(args.data)
    viewer = napari.Viewer(title="cellsam", show=True)
    viewer.window.resize(*args.size)
    viewer.add_image(image, name="dsb_" + name[:8],
                     contrast_limits=(0, float(np.percentile(image, 99.5))))
    widget = CellSAMWidget(viewer)
    viewer.window.add_dock_widget(widget, name="CellSAM labelling", area="right")
    if args.ckpt:
        widget.ui.ckpt_path.setText(str(args.ckpt))
        widget.ui.model_choice.setCurrentText("stage-2 checkpoint")
    widget.load_model()
    wait(widget)
    start = time.perf_counter()
    if args.ckpt:
        widget.segment_all()
        wait(widget)
        what = "Segment all"
    else:
        widget.draw_boxes()
        boxes, _ = label_boxes_xyxy(truth)
        per_box = []
        for x0, y0, x1, y1 in boxes[: args.boxes]:
            # box edges (pixel k spans [k, k + 1]) -> napari corners (pixel k centred at k)
            viewer.layers[BOXES].add_rectangles(np.array([[y0, x0], [y1, x1]]) - 0.5)
            a = time.perf_counter()
            widget.box_prompt()
            wait(widget)
            per_box.append(time.perf_counter() - a)
        viewer.layers[BOXES].edge_width = 1
        what = f"{len(per_box)} box prompts"
        # the first box also computes the image embedding
        print(f"widget box prompt: first {per_box[0]:.2f} s, then median "
              f"{1000 * np.median(per_box[1:]):.0f} ms (button to labels layer updated)")
    seconds = time.perf_counter() - start
    n = len(np.unique(viewer.layers[LABELS].data)) - 1
    widget.ui.status.setText(f"{what}: {n} cells in {seconds:.1f} s")
    viewer.layers.selection.active = viewer.layers[LABELS]
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    # halved and in 6-bit colour: the README's picture stays under 300 KB
    small = resize(shot[..., :3], (shot.shape[0] // 2, shot.shape[1] // 2), order=1,
                   anti_aliasing=True, preserve_range=True)
    small = (np.round(small / 4) * 4).clip(0, 255).astype(np.uint8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    imwrite(args.out, small)
    print(f"{args.out}: {small.shape[1]} x {small.shape[0]}, {args.out.stat().st_size // 1024} KB;"
          f" {what}: {n} cells in {seconds:.1f} s")
    viewer.close()


if __name__ == "__main__":
    main()
