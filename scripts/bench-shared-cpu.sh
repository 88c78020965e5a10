#!/usr/bin/env bash
# How DMUE training degrades when another process uses the cores (issue 14, "Shared CPUs"):
# one DMUE epoch at the CPU demo's size, libtorch on every core (train.threads = 0), with
# OpenMP's idle workers spinning (OMP_WAIT_POLICY=ACTIVE, libgomp's default) or sleeping
# (PASSIVE, what dmue-train sets unless told otherwise), on an idle machine and next to
# LOAD busy processes (a compile, a second run). Prints seconds per epoch and the ratios.
#
#   scripts/bench-shared-cpu.sh            # LOAD=1 competing busy process
#   LOAD=2 IMAGES=1400 scripts/bench-shared-cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/dmue-train}
IMAGES=${IMAGES:-700}; LOAD=${LOAD:-1}; REPEAT=${REPEAT:-2}
export DMUE_NO_PROGRESS=1 TORCH_CPP_LOG_LEVEL=ERROR
WORK=$(mktemp -d)
hogs=()
cleanup() { for p in "${hogs[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
"$BIN" synth --out "$WORK/data" --train "$IMAGES" --test 0 --size 72 --seed 0 >/dev/null

epoch_seconds() {  # policy -> wall seconds of one DMUE epoch (the best of REPEAT)
  local best=""
  for i in $(seq "$REPEAT"); do
    local out="$WORK/run-$1-$i"
    OMP_WAIT_POLICY=$1 "$BIN" fit --data "$WORK/data" --out "$out" -c configs/demo-cpu.toml \
      --epochs 1 --set train.threads=0 --set 'data.eval_split=""' >"$out.log" 2>&1 \
      || { cat "$out.log" >&2; exit 1; }
    local s
    s=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['seconds'])" "$out/metrics.jsonl")
    best=$(python3 -c "print(min(float(x) for x in '$s $best'.split()))")
  done
  echo "$best"
}

echo "$(nproc) cores, ${IMAGES} images, demo config (ResNet-18 width 16, 64x64), DMUE, 1 epoch, best of $REPEAT"
declare -A t
for load in 0 "$LOAD"; do
  for p in "${hogs[@]}"; do kill "$p" 2>/dev/null || true; done
  hogs=()
  for _ in $(seq "$load"); do (while :; do :; done) & hogs+=($!); done
  for policy in ACTIVE PASSIVE; do
    t[$policy,$load]=$(epoch_seconds "$policy")
    printf 'busy neighbours %d  OMP_WAIT_POLICY=%-8s %8.2f s/epoch\n' "$load" "$policy" "${t[$policy,$load]}"
  done
done
python3 - "${t[ACTIVE,0]}" "${t[PASSIVE,0]}" "${t[ACTIVE,$LOAD]}" "${t[PASSIVE,$LOAD]}" "$LOAD" <<'PY'
import sys
a0, p0, al, pl = map(float, sys.argv[1:5]); load = sys.argv[5]
print(f"idle:             PASSIVE / ACTIVE = {p0 / a0:.2f}")
print(f"{load} busy neighbour(s): PASSIVE / ACTIVE = {pl / al:.2f}")
print(f"slowdown from the neighbours: ACTIVE {al / a0:.2f}x, PASSIVE {pl / p0:.2f}x")
PY
