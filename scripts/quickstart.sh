#!/usr/bin/env bash
# The main job on one CPU: builds the environment if needed, generates the synthetic cells
# (first run only), trains stage 1 (CellFinder + ViT) and stage 2 (SAM neck) with the tiny
# configuration, evaluates on the synthetic test split and prints the results table.
# Extra arguments are Hydra overrides for both stages (e.g. trainer.max_time=00:00:10:00).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
RUN="${CELLSAM_QUICKSTART_DIR:-outputs/quickstart/$(date +%Y-%m-%d_%H-%M-%S)}"
start=$(date +%s)
python train.py experiment=quickstart hydra.run.dir="$RUN/finder" "$@"
python train.py experiment=quickstart_sam finder_ckpt="$RUN/finder/checkpoints/last.ckpt" \
    hydra.run.dir="$RUN/sam" "$@"
echo "[cellsam] quickstart finished in $(( $(date +%s) - start )) s; results: $RUN/sam/results.{json,csv,md,png}"
