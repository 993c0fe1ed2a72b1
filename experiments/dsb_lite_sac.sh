#!/usr/bin/env bash
# Segment Any Cell on real DSB 2018 nuclei from LiteMedSAM's weights on a 2-core CPU, beside
# CellSAM's dsb_lite.sh (same converted splits, same encoder, same 120-minute budget), every
# step timed into outputs/dsb_lite_sac/times.txt (README, "SAC on real nuclei").
# Inference settings are chosen on the val split only; test is read by the steps after.
#   bash experiments/dsb_lite_sac.sh             # the main run, its val grid, its test rows
#   bash experiments/dsb_lite_sac.sh ablations   # then the training ablations, 100 steps each
set -euo pipefail
OUT=outputs/dsb_lite_sac
source "$(dirname "$0")/dsb_common.sh"
timed train python train.py experiment=dsb_lite_sac
CKPT=$OUT/main/checkpoints/last.ckpt
# one factor at a time from the checkpoint's settings, on the first 32 val tiles: each setting
# decodes every nucleus again (about 3 s per tile on one core)
timed grid_val python experiments/sac_prompt_grid.py --ckpt "$CKPT" --data "$DATA" --split val \
  --one-factor --max-images 32 --out "$OUT/val_grid.json" \
  --grid prompt_selection=centroid,max_prob prompt_negatives=none,both points_per_cell=1,3 \
  prompt_threshold=0.4,0.5,0.6
timed test python experiments/sac_prompt_grid.py --ckpt "$CKPT" --data "$DATA" --split test \
  --from-val "$OUT/val_grid.json" --chosen-only --out "$OUT/test_rows.json"
[ "${1:-}" = ablations ] || exit 0
# Training ablations, 100 steps each, against the main run's first 100 steps (epoch000.ckpt):
# compare their val/all/mask_iou and val/all/fg_dice (csv/metrics.csv) after step 100.
for name in decoder_only no_prompts rank16 no_negatives amplified; do
  timed "train_$name" python train.py "experiment=dsb_lite_sac_$name" trainer.max_epochs=1
done
# and their whole pipeline on the first 32 val tiles, with the main run's val-chosen prompt
# settings at two thresholds (the README's pipeline columns)
for name in main decoder_only no_prompts rank16; do
  ckpt=$OUT/$name/checkpoints/last.ckpt
  [ "$name" = main ] && ckpt=$OUT/main/checkpoints/epoch000.ckpt
  timed "pipeline_val_$name" python experiments/sac_prompt_grid.py --ckpt "$ckpt" \
    --data "$DATA" --split val --max-images 32 --out "$OUT/ablation_$name.json" \
    --grid prompt_selection=max_prob prompt_negatives=both points_per_cell=1 \
    prompt_threshold=0.5,0.6
done
# the two that change the prompts keep their own at inference
timed pipeline_val_no_negatives python experiments/sac_prompt_grid.py \
  --ckpt "$OUT/no_negatives/checkpoints/last.ckpt" --data "$DATA" --split val --max-images 32 \
  --out "$OUT/ablation_no_negatives.json" --grid prompt_selection=max_prob \
  prompt_negatives=none points_per_cell=1 prompt_threshold=0.5,0.6
timed pipeline_val_amplified python experiments/sac_prompt_grid.py \
  --ckpt "$OUT/amplified/checkpoints/last.ckpt" --data "$DATA" --split val --max-images 32 \
  --out "$OUT/ablation_amplified.json" --grid prompt_selection=max_prob \
  prompt_negatives=both points_per_cell=3 prompt_threshold=0.5,0.6
