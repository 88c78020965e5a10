#!/usr/bin/env bash
# The label-audit benchmark: which score finds the flipped training labels of the synthetic benchmark?
#   dmue-audit      `dmue-train audit` of one DMUE run (the default class-normalised variant)
#   cleanlab        cleanlab 2.9 on 5-fold out-of-sample probabilities of baseline runs
#                   (self-confidence ranking; find_label_issues' own flags also reported)
#   baseline-loss   `dmue-train audit` of the baseline run: its in-sample loss, the naive reference
# Same data, seeds, model size and epochs for all (configs/bench-cpu.toml, scripts/experiments/
# run.sh's runs on DATA/r<rate>-s<seed>: RUNS/<arm>/r<rate>-s<seed>, trained there if missing).
# Then the retraining loop (stage retrain): relabel the top k of each DMUE audit at RETRAIN_RATE
# (k = the number of recorded flips) and train the baseline and DMUE again on the result.
#
#   bash scripts/experiments/audit-bench.sh            # every stage, resumable
#   STAGES=cv bash scripts/experiments/audit-bench.sh  # only the fold trainings
# Results: OUT/results.jsonl (one line per method, rate and seed), then
#   python3 scripts/experiments/audit_bench.py table OUT/results.jsonl --json docs/audit-summary.json
# Seconds: training (wall, one libtorch thread per run, JOBS runs at once, as run.sh measures
# them) plus the scoring itself. cleanlab is installed into .venv here only; dmue never imports it.
set -euo pipefail
cd "$(dirname "$0")/../.."
export TRAIN=${TRAIN:-target/release/dmue-train}
export OUT=${OUT:-runs/audit}
export RUNS=${RUNS:-runs/exp9}
export DATA=${DATA:-runs/exp9/data}
export CONFIG=${CONFIG:-configs/bench-cpu.toml}
export K=${K:-5}
RATES=${RATES:-0.1 0.2 0.3}
SEEDS=${SEEDS:-1 2 3}
JOBS=${JOBS:-2}
STAGES=${STAGES:-runs cv score retrain}
RETRAIN_RATE=${RETRAIN_RATE:-0.3}
PY=${PY:-.venv/bin/python}
export DMUE_NO_PROGRESS=1 DMUE_LOG=warn
mkdir -p "$OUT"

if [[ $STAGES == *runs* ]]; then
  # The one DMUE run and the one baseline run each method starts from (skipped when present).
  grid=""
  for r in $RATES; do grid+="$r|$SEEDS|baseline dmue-class-norm"$'\n'; done
  GRID="$grid" OUT=$RUNS DATA=$DATA JOBS=$JOBS bash scripts/experiments/run.sh > "$OUT/runs.log" 2>&1
fi

fold_job() {  # fold_job RATE SEED FOLD: train a baseline without fold FOLD, predict it
  local rate=$1 seed=$2 f=$3
  local dir="$OUT/cv/r$rate-s$seed/f$f"
  [ -f "$dir/val.jsonl" ] && return 0
  rm -rf "$dir/run"
  local t0; t0=$(date +%s.%N)
  if ! "$TRAIN" fit --data "$dir/data" -c "$CONFIG" --mode baseline --out "$dir/run" \
      --set "train.seed=$seed" --set data.eval_split=val > "$dir/fit.log" 2>&1; then
    echo "FAILED: fold $f rate $rate seed $seed (see $dir/fit.log)"; return 1
  fi
  "$TRAIN" eval "$dir/run" --split val --predictions "$dir/val.jsonl.tmp" > "$dir/eval.log" 2>&1
  python3 -c "print($(date +%s.%N) - $t0)" > "$dir/seconds"
  mv "$dir/val.jsonl.tmp" "$dir/val.jsonl"
  echo "fold $f rate $rate seed $seed: $(cat "$dir/seconds") s"
}
export -f fold_job

if [[ $STAGES == *cv* ]]; then
  jobs=()
  for seed in $SEEDS; do
    for rate in $RATES; do
      d="$OUT/cv/r$rate-s$seed"
      [ -f "$d/f$((K - 1))/data/manifest.jsonl" ] ||
        python3 scripts/experiments/audit_bench.py folds "$DATA/r$rate-s$seed" "$d" "$K" "$seed"
      for f in $(seq 0 $((K - 1))); do jobs+=("$rate $seed $f"); done
    done
  done
  printf '%s\n' "${jobs[@]}" | xargs -P "$JOBS" -L 1 bash -c 'fold_job "$@"' _
fi

run_seconds() {  # wall seconds run.sh recorded for ARM RATE SEED (the last line wins)
  python3 - "$RUNS/results.jsonl" "$1" "$2" "$3" <<'PY'
import json, sys
path, arm, rate, seed = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
secs = [r["seconds"] for r in map(json.loads, open(path))
        if r["arm"] == arm and r["flip_rate"] == rate and r["seed"] == seed]
print(secs[-1])
PY
}

with_rate() {  # adds flip_rate and seed to score's JSON line
  python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r.update(flip_rate=$1, seed=$2); print(json.dumps(r))"
}

if [[ $STAGES == *score* ]]; then
  for seed in $SEEDS; do
    for rate in $RATES; do
      data="$DATA/r$rate-s$seed"
      for arm in dmue-class-norm baseline; do
        run="$RUNS/$arm/r$rate-s$seed"
        t0=$(date +%s.%N)
        "$TRAIN" audit "$run" > "$OUT/audit-$arm-r$rate-s$seed.log" 2>&1
        secs=$(python3 -c "print($(date +%s.%N) - $t0 + $(run_seconds "$arm" "$rate" "$seed"))")
        name=$([ "$arm" = baseline ] && echo baseline-loss || echo dmue-audit)
        python3 scripts/experiments/audit_bench.py score "$data" "$run/audit.jsonl" "$name" "$secs" \
          | with_rate "$rate" "$seed" | tee -a "$OUT/results.jsonl"
        # Every candidate score of the run, as the audit measured it (docs/audit.md's choice).
        python3 scripts/experiments/audit_bench.py candidates "$run/audit.json" "$arm" \
          | while read -r line; do echo "$line" | with_rate "$rate" "$seed"; done >> "$OUT/candidates.jsonl"
      done
      d="$OUT/cv/r$rate-s$seed"
      t0=$(date +%s.%N)
      "$PY" scripts/experiments/audit_bench.py cleanlab "$d" "$K"
      secs=$(python3 -c "import glob; print($(date +%s.%N) - $t0 + sum(float(open(p).read()) for p in glob.glob('$d/f*/seconds')))")
      python3 scripts/experiments/audit_bench.py score "$data" "$d/cleanlab.jsonl" cleanlab "$secs" \
        | with_rate "$rate" "$seed" | tee -a "$OUT/results.jsonl"
    done
  done
  python3 scripts/experiments/audit_bench.py table "$OUT/results.jsonl"
fi

if [[ $STAGES == *retrain* ]]; then
  for seed in $SEEDS; do
    run="$RUNS/dmue-class-norm/r$RETRAIN_RATE-s$seed"
    fixed="$OUT/relabelled/r$RETRAIN_RATE-s$seed"
    [ -f "$run/audit.jsonl" ] || "$TRAIN" audit "$run" > /dev/null
    k=$(python3 -c "import json; print(json.load(open('$run/audit.json'))['flipped'])")
    [ -f "$fixed/manifest.jsonl" ] || "$TRAIN" relabel "$run" --top "$k" --out "$fixed"
  done
  # (DATA before OUT: prefix assignments expand left to right.)
  GRID="$RETRAIN_RATE|$SEEDS|baseline dmue-class-norm" DATA=$OUT/relabelled OUT=$OUT/retrain \
    JOBS=$JOBS bash scripts/experiments/run.sh > "$OUT/retrain.log" 2>&1
  python3 scripts/experiments/audit_bench.py retrain "$RUNS/results.jsonl" "$OUT/retrain/results.jsonl" \
    "$RETRAIN_RATE" "$OUT/relabelled"
fi
