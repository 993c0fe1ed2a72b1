#!/usr/bin/env bash
# Builds the project's virtual environment (.venv) when it is missing or pyproject.toml
# changed, then puts it first on PATH. Sourced by scripts/quickstart.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CELLSAM_VENV:-$ROOT/.venv}"
STAMP="$VENV/.cellsam-install-stamp"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  PY="${PYTHON:-}"
  if [ -z "$PY" ]; then
    for c in python3.11 python3.12 python3.10 python3; do
      if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi
    done
  fi
  echo "[cellsam] building $VENV with $($PY --version) (torch from the package registry: a few GB, minutes)"
  start=$(date +%s)
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch is left unpinned on purpose (pyproject excludes 2.13.0, whose local CPU-only
  # wheel on some machines has no matching torchvision).
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev,napari]"
  "$VENV/bin/python" -c "import torch, torchvision, segment_anything, lightning, hydra; print('[cellsam] torch', torch.__version__, 'torchvision', torchvision.__version__)"
  echo "$want" > "$STAMP"
  echo "[cellsam] environment ready in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1))"
fi
export PATH="$VENV/bin:$PATH"
export PROJECT_ROOT="$ROOT"
cd "$ROOT"
