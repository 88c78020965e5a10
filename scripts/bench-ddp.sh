#!/usr/bin/env bash
# Data-parallel training on one machine (docs/performance.md, "Two processes"): the benchmark
# configuration (configs/bench-cpu.toml: ResNet-18 width 16, 48x48 crops, one libtorch thread
# per process) for EPOCHS epochs of DMUE (or MODE), once as 1 process x 1 thread and once as
# `fit --nproc 2` (2 ranks x 1 thread, c10d/Gloo on loopback), each the best of REPEAT.
# Prints training images per second (summary.json, evaluation excluded) and the ratio.
#
#   scripts/bench-ddp.sh                     # DMUE, 2100 images, 2 epochs
#   MODE=baseline IMAGES=4200 scripts/bench-ddp.sh
#   EXTRA="--set train.batch_size=140" scripts/bench-ddp.sh          # any fit arguments
#   CONFIG=configs/demo-cpu.toml SIZE=72 scripts/bench-ddp.sh         # 64x64 crops
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/dmue-train}
IMAGES=${IMAGES:-2100}; EPOCHS=${EPOCHS:-2}; REPEAT=${REPEAT:-2}; MODE=${MODE:-dmue}
CONFIG=${CONFIG:-configs/bench-cpu.toml}; SIZE=${SIZE:-54}; EXTRA=${EXTRA:-}
export DMUE_NO_PROGRESS=1 DMUE_LOG=warn TORCH_CPP_LOG_LEVEL=ERROR
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$BIN" synth --out "$WORK/data" --train "$IMAGES" --test 0 --size "$SIZE" --seed 0 >/dev/null

rate() {  # name extra-args... -> best training img/s over REPEAT runs
  local name=$1; shift
  local best=0
  for i in $(seq "$REPEAT"); do
    local out="$WORK/$name-$i"
    # shellcheck disable=SC2086  # EXTRA is split into arguments
    "$BIN" fit --data "$WORK/data" --out "$out" -c "$CONFIG" --mode "$MODE" \
      --epochs "$EPOCHS" --set train.threads=1 --set 'data.eval_split=""' $EXTRA "$@" \
      >"$out.log" 2>&1 || { cat "$out.log" >&2; exit 1; }
    best=$(python3 -c "import json,sys; print(max(float(sys.argv[2]), json.load(open(sys.argv[1]))['images_per_second']))" \
      "$out/summary.json" "$best")
  done
  echo "$best"
}

echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $IMAGES images, $CONFIG $EXTRA, $MODE, $EPOCHS epochs, best of $REPEAT"
one=$(rate one)
printf '1 process  x 1 thread  %8.1f img/s\n' "$one"
two=$(rate two --nproc 2)
printf '2 ranks    x 1 thread  %8.1f img/s\n' "$two"
python3 -c "import sys; print(f'ratio 2 ranks / 1 process: {float(sys.argv[2]) / float(sys.argv[1]):.2f}x')" "$one" "$two"
