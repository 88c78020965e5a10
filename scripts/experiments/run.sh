#!/usr/bin/env bash
# Issue 5's experiments on the synthetic benchmark (ground truth known), CPU-sized:
#   1. Table 1 analogue: baseline vs DMUE at flip rates RATES, seeds SEEDS (clean-test accuracy)
#   2. Table 2 analogue: DMUE with latent distribution / similarity preserving / confidence
#      switched off one at a time, at flip rate ABLATION_RATE, seeds ABLATION_SEEDS
#   3. latent distributions vs the true mixtures (KL), DMUE against the baseline's softmax
#   4. confidence vs ambiguity (Spearman) and alpha of flipped vs clean samples (histograms)
# 3 and 4 come from `dmue-train analyze` on the runs at flip rate ANALYZE_RATE.
#
# Model and schedule: configs/demo-cpu.toml (ResNet-18 architecture at width 16, 64x64 crops of
# 72x72 faces, 20 epochs, the paper's loss hyper-parameters) on 2,100 training and 700 test
# faces; epochs and size are scaled down from the paper's (ResNet-18 width 64, 224x224, 40
# epochs) so that the whole grid runs on 2 CPU cores. Each run's seed is both the data seed
# and the training seed. Results: OUT/results.jsonl, then scripts/experiments/summarize.py.
#
#   bash scripts/experiments/run.sh                 # the full grid, about 40 minutes on 2 idle cores
#   RATES="0.3" SEEDS="1" bash scripts/experiments/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
RATES=${RATES:-"0 0.1 0.2 0.3"}
SEEDS=${SEEDS:-"1 2 3"}
ABLATION_RATE=${ABLATION_RATE:-0.3}
ABLATION_SEEDS=${ABLATION_SEEDS:-"1"}
ANALYZE_RATE=${ANALYZE_RATE:-0.3}
CONFIG=${CONFIG:-configs/demo-cpu.toml}
OUT=${OUT:-runs/experiments}
TRAIN=${TRAIN:-target/release/dmue-train}
export DMUE_NO_PROGRESS=1 DMUE_LOG=warn
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"

data() {  # data RATE SEED -> directory
  local d="$OUT/data/r$1-s$2"
  [ -f "$d/manifest.jsonl" ] || "$TRAIN" synth --out "$d" --train 2100 --test 700 --size 72 \
      --seed "$2" --flip-rate "$1" >/dev/null
  echo "$d"
}

run() {  # run NAME RATE SEED MODE [--set ...]
  local name=$1 rate=$2 seed=$3 mode=$4; shift 4
  local dir="$OUT/$name/r$rate-s$seed"
  if [ ! -f "$dir/summary.json" ]; then
    rm -rf "$dir"; mkdir -p "$(dirname "$dir")"
    local t0=$(date +%s)
    "$TRAIN" fit --data "$(data "$rate" "$seed")" --config "$CONFIG" --out "$dir" --mode "$mode" \
        --set "train.seed=$seed" "$@" > "$dir.log" 2>&1 || { echo "FAILED: $dir (see $dir.log)"; tail -5 "$dir.log"; exit 1; }
    echo "$name rate $rate seed $seed: $(grep -m1 'accuracy' "$dir.log" | xargs) ($(( $(date +%s) - t0 )) s)"
  fi
  local analysis=null
  if [ "$rate" = "$ANALYZE_RATE" ]; then
    [ -f "$dir/analysis.json" ] || "$TRAIN" analyze "$dir" > "$dir.analyze.log" 2>&1
    analysis=$(cat "$dir/analysis.json")
  fi
  python3 - "$dir" "$name" "$rate" "$seed" "$analysis" >> "$RESULTS" <<'PY'
import json, sys
d, name, rate, seed, analysis = sys.argv[1:]
ev = json.load(open(f"{d}/eval-test.json"))
print(json.dumps({"experiment": name, "flip_rate": float(rate), "seed": int(seed),
                  "accuracy": ev["accuracy"], "analysis": json.loads(analysis)}))
PY
}

: > "$RESULTS"
for rate in $RATES; do
  for seed in $SEEDS; do
    run baseline "$rate" "$seed" baseline
    run dmue "$rate" "$seed" dmue
  done
done
for seed in $ABLATION_SEEDS; do
  run no-latent "$ABLATION_RATE" "$seed" dmue --set loss.latent=false
  run no-similarity-preserving "$ABLATION_RATE" "$seed" dmue --set loss.similarity_preserving=false
  run no-confidence "$ABLATION_RATE" "$seed" dmue --set loss.confidence=false
  # Eq. 7 as the authors' code computes it: each row of S min-max scaled, the sample itself
  # included in its class mean.
  run official-eq7 "$ABLATION_RATE" "$seed" dmue --set loss.similarity_minmax=true \
      --set loss.similarity_include_self=true
done
python3 scripts/experiments/summarize.py "$RESULTS"
