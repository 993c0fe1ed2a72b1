#!/usr/bin/env bash
# CellSAM on real DSB 2018 nuclei from LiteMedSAM's weights on a 2-core CPU, every step
# timed (README, "Real nuclei on a CPU"). Settings are chosen on the val split only; the
# test split is read once, by the last three steps.
#   bash experiments/dsb_lite.sh            # outputs/dsb_lite/{finder,sam,eval_test,...}
set -euo pipefail
OUT=outputs/dsb_lite
source "$(dirname "$0")/dsb_common.sh"
timed stage1 python train.py experiment=dsb_lite
timed stage2 python train.py experiment=dsb_lite_sam
CKPT=$OUT/sam/checkpoints/last.ckpt
timed tune_val python experiments/tune_on_val.py --ckpt "$CKPT" --data "$DATA" \
  --out "$OUT/tune_val.json"
read -r BOX IOU < <(python -c "import json; b = json.load(open('$OUT/tune_val.json'))['best']; \
print(b['box_threshold'], b['iou_threshold'])")
timed eval_test python eval.py ckpt="$CKPT" data=dsb2018_fixed split=test \
  inference.box_threshold="$BOX" inference.iou_threshold="$IOU" hydra.run.dir="$OUT/eval_test"
timed gt_boxes_zero_shot python experiments/gt_box_rows.py --packaged --data "$DATA" \
  --out "$OUT/gt_boxes_zero_shot.json"
timed gt_boxes_stage2 python experiments/gt_box_rows.py --ckpt "$CKPT" --data "$DATA" \
  --out "$OUT/gt_boxes_stage2.json"
