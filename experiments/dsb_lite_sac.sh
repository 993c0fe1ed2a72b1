#!/usr/bin/env bash
# Segment Any Cell on real DSB 2018 nuclei from LiteMedSAM's weights on a 2-core CPU, beside
# CellSAM's dsb_lite.sh (same converted splits, same encoder, same 120-minute budget), every
# step timed into outputs/dsb_lite_sac/times.txt (README, "Segment Any Cell on real nuclei").
# Inference settings are chosen on the val split only; test is read by the steps after.
#   bash experiments/dsb_lite_sac.sh             # the main run, its val grid, its test rows
#   bash experiments/dsb_lite_sac.sh ablations   # then the training ablations, 100 steps each
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
SRC=${CELLSAM_SHARED_DATA:-../shared/data}/dsb2018_fixed
DATA=${CELLSAM_DATA:-data}/dsb2018_fixed
OUT=outputs/dsb_lite_sac
mkdir -p "$OUT"
timed() {  # timed <name> <command...>: appends "<name> <seconds>" to $OUT/times.txt
  local name=$1 start=$SECONDS; shift
  "$@"
  echo "$name $((SECONDS - start))" | tee -a "$OUT/times.txt"
}
[ -d "$DATA" ] || timed convert python -m data_prep.pairs --src "$SRC" --name dsb2018_fixed \
  --channels nuclear=all --out "$(dirname "$DATA")" --quiet
timed train python train.py experiment=dsb_lite_sac
CKPT=$OUT/main/checkpoints/last.ckpt
timed grid_val python experiments/sac_prompt_grid.py --ckpt "$CKPT" --data "$DATA" --split val \
  --out "$OUT/val_grid.json" --grid prompt_selection=centroid,max_prob \
  prompt_negatives=none,both points_per_cell=1,3 prompt_threshold=0.4,0.5,0.6
timed rows_test python experiments/sac_prompt_grid.py --ckpt "$CKPT" --data "$DATA" \
  --split test --from-val "$OUT/val_grid.json" --out "$OUT/test_rows.json"
# the chosen settings as eval.py overrides
CHOSEN=$(python -c "import json; c = json.load(open('$OUT/val_grid.json'))['chosen']; \
print(' '.join(f'inference.{k}={v}' for k, v in c.items()))")
# shellcheck disable=SC2086
timed eval_test python eval.py experiment=dsb_lite_sac_eval ckpt="$CKPT" split=test $CHOSEN
[ "${1:-}" = ablations ] || exit 0
# Training ablations at the main run's first 100 steps (its epoch000.ckpt): each trains one
# "epoch" of 100 steps and is scored on test with the main run's val-chosen settings.
# shellcheck disable=SC2086
timed eval_test_main100 python eval.py experiment=dsb_lite_sac_eval split=test $CHOSEN \
  ckpt="$OUT/main/checkpoints/epoch000.ckpt" hydra.run.dir="$OUT/eval_test_main100"
for name in rank16 decoder_only no_prompts; do
  timed "train_$name" python train.py "experiment=dsb_lite_sac_$name" trainer.max_epochs=1
  # shellcheck disable=SC2086
  timed "eval_test_$name" python eval.py experiment=dsb_lite_sac_eval split=test $CHOSEN \
    ckpt="$OUT/$name/checkpoints/last.ckpt" hydra.run.dir="$OUT/eval_test_$name"
done
