#!/usr/bin/env bash
# Builds the Cellpose peer's own venv at experiments/peers/cellpose/.venv (gitignored).
# The cellsam package is not installed here: this venv only trains and predicts; scoring
# runs in the main venv (python eval.py pred_dir=...).
#
#   bash experiments/peers/cellpose/setup.sh
#
# Environment:
#   PYTHON=python3.11     interpreter for the venv
#   CELLPOSE_TORCH=spec   optional torch requirement installed first, e.g.
#                         "torch==2.13.0+cpu" to take a CPU wheel that pip can find locally;
#                         unset: pip picks torch from its default index as a cellpose dependency.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3.11}"
VENV="$HERE/.venv"
start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if [ -n "${CELLPOSE_TORCH:-}" ]; then
  "$VENV/bin/python" -m pip install --quiet "$CELLPOSE_TORCH"
fi
"$VENV/bin/python" -m pip install --quiet -r "$HERE/requirements.txt"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md

import numpy
import tifffile
import torch

v = md.version("cellpose")
assert v.startswith("3."), f"cellpose {v}: this peer needs the 3.x CNN generation"
print(f"[cellpose peer] cellpose {v}, torch {torch.__version__}, numpy {numpy.__version__}, "
      f"tifffile {tifffile.__version__}")
PY
echo "[cellpose peer] venv ready at $VENV in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1))"
