# Sourced by dsb_lite.sh and dsb_lite_sac.sh with OUT set: the environment, the converted DSB
# split (converted on first use), and `timed`, which appends "<name> <seconds>" to
# $OUT/times.txt.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
SRC=${CELLSAM_SHARED_DATA:-../shared/data}/dsb2018_fixed
DATA=${CELLSAM_DATA:-data}/dsb2018_fixed
mkdir -p "$OUT"
timed() {  # timed <name> <command...>
  local name=$1 start=$SECONDS; shift
  "$@"
  echo "$name $((SECONDS - start))" | tee -a "$OUT/times.txt"
}
[ -d "$DATA" ] || timed convert python -m data_prep.pairs --src "$SRC" --name dsb2018_fixed \
  --channels nuclear=all --out "$(dirname "$DATA")" --quiet
