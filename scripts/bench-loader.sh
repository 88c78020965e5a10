#!/usr/bin/env bash
# Training input pipeline, one run: images/s of the loader alone (decode or read, random crop
# 224 of 256, flip, normalise) for the three loaders (memory, packed, stream) with 1 and
# THREADS threads, on IMAGES synthetic 256x256 PNG crops (what `prepare` writes); then the
# training step's demand measured in the same run (DMUE, ResNet-18, 224x224, batch 72, one
# epoch after a warm-up epoch, on this machine) and the ratio loader / demand.
#
#   scripts/bench-loader.sh               # IMAGES=2000 THREADS=$(nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES=${IMAGES:-2000}; THREADS=${THREADS:-$(nproc)}; BATCHES=${BATCHES:-20}
TRAIN=target/release/dmue-train
export DMUE_NO_PROGRESS=1 DMUE_LOG=warn
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$TRAIN" synth --out "$WORK/data" --train "$IMAGES" --test 8 --size 256 >/dev/null
echo "data: $IMAGES PNG crops at 256x256; machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

RESULTS="$WORK/results.jsonl"
for loader in memory packed stream; do
  for t in $(printf '%s\n' 1 "$THREADS" | sort -un); do
    # Drop the packed cache before its first run so that its build time is measured once.
    [ "$loader" = packed ] && [ "$t" = 1 ] && rm -rf "$WORK/data/.cache"
    "$TRAIN" bench-loader --data "$WORK/data" --loader "$loader" --threads "$t" --batches "$BATCHES" >> "$RESULTS"
  done
done

# The demand: the training step's rate in the paper's setting on this machine.
"$TRAIN" synth --out "$WORK/small" --train 144 --test 8 --size 256 >/dev/null
"$TRAIN" fit --data "$WORK/small" --out "$WORK/run" --epochs 2 --device "${DEVICE:-auto}" \
    --set data.eval_split='""' --set train.threads=0 >/dev/null 2>&1
python3 - "$RESULTS" "$WORK/run/metrics.jsonl" "${GPU_DEMAND:-1590}" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
demand = json.loads(open(sys.argv[2]).read().splitlines()[-1])["images_per_second"]  # epoch 2: no warm-up
gpu = float(sys.argv[3])
print(f"{'loader':<8} {'threads':>7} {'open s':>8} {'img/s':>9} {'img/s/thread':>13} {'/ step demand':>14} {'threads for ' + str(int(gpu)) + ' img/s':>22}")
for r in rows:
    need = gpu / r["images_per_second_per_thread"]
    print(f"{r['loader']:<8} {r['threads']:>7} {r['open_seconds']:>8.2f} {r['images_per_second']:>9.1f} "
          f"{r['images_per_second_per_thread']:>13.1f} {r['images_per_second'] / demand:>14.1f} {need:>22.1f}")
print(f"training step demand here (DMUE, ResNet-18, 224x224, batch 72): {demand:.1f} img/s")
print(f"last column: loader threads needed to feed {gpu:.0f} img/s, the H100 PyTorch DMUE step rate of environment.md")
PY
