#!/usr/bin/env bash
# tract's convolution strategy knobs (environment variables read by tract 0.23 when a plan is
# optimised) against tract's defaults, on dmue-serve's two paths: the classifier alone
# (`bench`, ResNet-18 at 224) and the photo path (`bench --photo`, 640x480, one face). One
# thread, runs by turns (ROUNDS rounds, each variant once per round, each round starting at the
# next variant, so a slow moment of the machine lands on every variant alike). Prints p50 per variant and round, and each variant's
# median p50 over the default's.
#
#   scripts/bench-tract-knobs.sh                 # ResNet-18 (width 64) at 224x224, 7 classes
#   ROUNDS=5 MODEL=runs/demo/target.onnx scripts/bench-tract-knobs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}; ITERS=${ITERS:-30}
TRAIN=target/release/dmue-train; SERVE=target/release/dmue-serve
export DMUE_NO_PROGRESS=1 DMUE_LOG=warn
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
source scripts/lib/bench-model.sh
"$TRAIN" synth --mode photo --max-faces 1 --out "$WORK/photo" --train 0 --test 1 --seed 2 >/dev/null
PHOTO="$WORK/photo/images/test/000000.png"
echo "model: $MODEL, machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

VARIANTS=(
  "default|"
  "eager im2col for 3x3 (LAZY_IM2COL_MIN_KERNEL=10)|TRACT_LAZY_IM2COL_MIN_KERNEL=10"
  "lazy im2col for all (LAZY_IM2COL_MIN_KERNEL=1)|TRACT_LAZY_IM2COL_MIN_KERNEL=1"
  "eager up to 64 MiB (LAZY_IM2COL_MAX_EAGER_BYTES)|TRACT_LAZY_IM2COL_MAX_EAGER_BYTES=67108864"
  "blocked conv on (ENABLE_BLOCKED_CONV)|TRACT_ENABLE_BLOCKED_CONV=1"
  "no direct spatial conv (DISABLE_DIRECT_SPATIAL)|TRACT_DISABLE_DIRECT_SPATIAL=1"
)
RESULTS="$WORK/results.txt"
n=${#VARIANTS[@]}
for round in $(seq "$ROUNDS"); do
  # Each round starts at another variant, so no variant always runs first or last.
  for i in $(seq 0 $((n - 1))); do
    v=${VARIANTS[$(( (i + round - 1) % n ))]}
    label=${v%%|*}; knob=${v#*|}
    for path in classifier photo; do
      args=(bench --iters "$ITERS" --warmup 5)
      [ "$path" = photo ] && args+=(--photo "$PHOTO")
      p50=$(env $knob "$SERVE" --model "$MODEL" --engine tract --threads 1 "${args[@]}" \
        | python3 -c "import json,sys; print(json.loads(sys.stdin.read())['p50_ms'])")
      echo "$round|$label|$path|$p50" >>"$RESULTS"
    done
  done
done

python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("|") for l in open(sys.argv[1])]
labels = list(dict.fromkeys(r[1] for r in rows))
p50 = {}
for rnd, label, path, v in rows:
    p50.setdefault((label, path), []).append(float(v))
print(f"{'variant':<50} {'classifier p50 ms (rounds)':<44} {'ratio':>6}   {'photo p50 ms (rounds)':<44} {'ratio':>6}")
for label in labels:
    cells = []
    for path in ("classifier", "photo"):
        xs = p50[(label, path)]
        ratio = statistics.median(xs) / statistics.median(p50[("default", path)])
        cells.append(f"{' / '.join(f'{x:.1f}' for x in xs):<44} {ratio:>6.3f}")
    print(f"{label:<50} {cells[0]}   {cells[1]}")
PY
