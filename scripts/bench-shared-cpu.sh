#!/usr/bin/env bash
# How DMUE training degrades when another process uses the cores (docs/performance.md, "Shared CPUs"):
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

# Each setting is an environment assignment for libgomp: ACTIVE spins forever, PASSIVE sleeps at
# once, "OMP_WAIT_POLICY=unset" (a value libgomp ignores, so it keeps its default: spin 300,000
# rounds, then sleep) is what plain libtorch does, GOMP_SPINCOUNT=N spins N rounds.
SETTINGS=${SETTINGS:-OMP_WAIT_POLICY=ACTIVE OMP_WAIT_POLICY=unset OMP_WAIT_POLICY=PASSIVE}

epoch_seconds() {  # setting load -> wall seconds of one DMUE epoch (the best of REPEAT)
  local best=""
  for i in $(seq "$REPEAT"); do
    local out="$WORK/run-${1//[^A-Za-z0-9]/_}-$2-$i"
    env "$1" "$BIN" fit --data "$WORK/data" --out "$out" -c configs/demo-cpu.toml \
      --epochs 1 --set train.threads=0 --set 'data.eval_split=""' >"$out.log" 2>&1 \
      || { cat "$out.log" >&2; exit 1; }
    local s
    s=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['seconds'])" "$out/metrics.jsonl")
    best=$(python3 -c "print(min(float(x) for x in '$s $best'.split()))")
  done
  echo "$best"
}

echo "$(nproc) cores, ${IMAGES} images, demo config (ResNet-18 width 16, 64x64), DMUE, 1 epoch, best of $REPEAT"
results=()
for load in 0 "$LOAD"; do
  for p in "${hogs[@]}"; do kill "$p" 2>/dev/null || true; done
  hogs=()
  for _ in $(seq "$load"); do (while :; do :; done) & hogs+=($!); done
  for setting in $SETTINGS; do
    t=$(epoch_seconds "$setting" "$load")
    results+=("$setting $load $t")
    printf 'busy neighbours %d  %-28s %8.2f s/epoch\n' "$load" "$setting" "$t"
  done
done
printf '%s\n' "${results[@]}" | python3 -c '
import sys
rows = [l.split() for l in sys.stdin if l.strip()]
t = {(s, int(l)): float(v) for s, l, v in rows}
loads = sorted({l for _, l in t})
base = rows[0][0]
print(f"ratios against {base} on the idle machine:")
for s in dict.fromkeys(r[0] for r in rows):
    print(f"  {s:<28}" + "".join(f"  {l} busy: {t[(s, l)] / t[(base, 0)]:5.2f}x" for l in loads))
'
