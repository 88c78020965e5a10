#!/usr/bin/env bash
# Paired experiments on the synthetic benchmark (ground truth known).
#
# Every arm of one seed trains on the same data (`synth --seed SEED`) from the same initial trunk
# and target weights (`train.seed = SEED`; the network draws them before any auxiliary part),
# with the same batches and augmentation. Arms:
#   baseline, label-smoothing, gce, sce, elr, eac
#                                           single-branch losses on the same backbone
#   dmue-paper, dmue-authors, dmue-frozen, dmue-class-norm, dmue-gce, dmue-gce-target, dmue-elr
#                                           DMUE variants, configs/variants/<name>.toml
#   <dmue-arm>+no-latent|no-sp|no-confidence   Table 2 ablations of a variant
# GRID lines are "RATE|SEEDS|ARMS". Jobs run seed by seed (all arms of seed 1, then seed 2...),
# so whatever has finished is paired; JOBS runs at once, each on one libtorch thread.
# Resumable: a run with a summary.json is not redone; each finished run appends one line to
# OUT/results.jsonl. Then: python3 scripts/experiments/summarize.py OUT/results.jsonl
#
#   bash scripts/experiments/run.sh                       # the default grid (see GRID below)
#   GRID="0.3|1 2|baseline dmue-paper" bash scripts/experiments/run.sh
#   INIT=runs/exp10/pretrain/backbone.safetensors REGIME=pretrained OUT=runs/exp9-pretrained \
#     DATA=runs/exp9/data bash scripts/experiments/run.sh   # every arm from pretrained weights
#   EXTRA="--set train.epochs=24 --set train.lr_milestones=[17,22]" REGIME=scratch-e24 ...
#                                                         # the same fit arguments for every arm
set -euo pipefail
cd "$(dirname "$0")/../.."
export TRAIN=${TRAIN:-target/release/dmue-train}
export OUT=${OUT:-runs/exp9}
export CONFIG=${CONFIG:-configs/bench-cpu.toml}
export REGIME=${REGIME:-scratch}
# Pretrained backbone for every arm (fit --init), and where the rendered data lives (shared
# between regimes: the same seeds give the same images).
export INIT=${INIT:-}
# Extra `fit` arguments given to every arm (a longer schedule, say), split on spaces.
export EXTRA=${EXTRA:-}
export DATA=${DATA:-$OUT/data}
NTRAIN=${NTRAIN:-4200}
NTEST=${NTEST:-2100}
SIZE=${SIZE:-54}
JOBS=${JOBS:-2}
DEFAULT_GRID="0.3|1 2 3 4 5|baseline label-smoothing gce dmue-paper dmue-authors dmue-frozen dmue-class-norm
0|1 2 3|baseline dmue-paper dmue-authors dmue-class-norm
0.1|1 2 3|baseline dmue-paper dmue-authors dmue-class-norm
0.2|1 2 3|baseline dmue-paper dmue-authors dmue-class-norm"
GRID=${GRID:-$DEFAULT_GRID}
export DMUE_NO_PROGRESS=1 DMUE_LOG=warn
mkdir -p "$OUT"

data_dir() { echo "$DATA/r$1-s$2"; }
export -f data_dir

arm_args() {  # arm_args ARM -> fit arguments
  local base=${1%%+*} extra=""
  [[ $1 == *+* ]] && extra=${1#*+}
  case $base in
    baseline | label-smoothing | gce | sce | elr | eac) echo "--mode $base" ;;
    dmue-*)
      local f="configs/variants/${base#dmue-}.toml"
      [ -f "$f" ] || { echo "unknown arm $base: no $f" >&2; return 1; }
      echo "--mode dmue -c $f" ;;
    *) echo "unknown arm $base" >&2; return 1 ;;
  esac
  case $extra in
    "") ;;
    no-latent) echo "--set loss.latent=false" ;;
    no-sp) echo "--set loss.similarity_preserving=false" ;;
    no-confidence) echo "--set loss.confidence=false" ;;
    *) echo "unknown ablation $extra" >&2; return 1 ;;
  esac
}
export -f arm_args

run_job() {  # run_job ARM RATE SEED
  local arm=$1 rate=$2 seed=$3
  local dir="$OUT/$arm/r$rate-s$seed"
  if [ -f "$dir/summary.json" ]; then return 0; fi
  rm -rf "$dir"; mkdir -p "$(dirname "$dir")"
  local t0; t0=$(date +%s)
  local init=()
  [ -n "$INIT" ] && init=(--init "$INIT")
  # shellcheck disable=SC2046,SC2086
  if ! "$TRAIN" fit --data "$(data_dir "$rate" "$seed")" -c "$CONFIG" $(arm_args "$arm") \
      "${init[@]}" $EXTRA --out "$dir" --set "train.seed=$seed" > "$dir.log" 2>&1; then
    echo "FAILED: $arm rate $rate seed $seed (see $dir.log)"; tail -3 "$dir.log"; return 1
  fi
  # Every arm: DMUE runs give latent distributions and alpha, the others their softmax.
  "$TRAIN" analyze "$dir" > "$dir.analyze.log" 2>&1 || true
  local secs=$(( $(date +%s) - t0 ))
  python3 - "$dir" "$arm" "$rate" "$seed" "$secs" "$OUT/results.jsonl" <<'PY'
import fcntl, json, os, sys
d, arm, rate, seed, secs, results = sys.argv[1:]
ev = json.load(open(f"{d}/eval-test.json"))
a = f"{d}/analysis.json"
line = json.dumps({"regime": os.environ["REGIME"], "arm": arm, "flip_rate": float(rate),
                   "seed": int(seed), "accuracy": ev["accuracy"],
                   "per_class_recall": ev["per_class_recall"], "classes": ev["classes"],
                   "seconds": int(secs),
                   "analysis": json.load(open(a)) if os.path.exists(a) else None}) + "\n"
# Runs finishing at once append under a lock and in one write: two lines once interleaved.
fd = os.open(results, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, line.encode())
os.close(fd)
PY
  echo "$arm rate $rate seed $seed: $(python3 -c "import json;print(round(100*json.load(open('$dir/eval-test.json'))['accuracy'],2))") % (${secs} s)"
}
export -f run_job

jobs=()
while IFS='|' read -r rate seeds arms; do
  [ -z "$rate" ] && continue
  for seed in $seeds; do
    d=$(data_dir "$rate" "$seed")
    [ -f "$d/manifest.jsonl" ] || "$TRAIN" synth --out "$d" --train "$NTRAIN" --test "$NTEST" \
        --size "$SIZE" --seed "$seed" --flip-rate "$rate" > /dev/null
    for arm in $arms; do arm_args "$arm" > /dev/null; jobs+=("$seed $arm $rate"); done
  done
done <<< "$GRID"
# Seed by seed: sort on the seed, keep the grid's order within a seed.
printf '%s\n' "${jobs[@]}" | sort -s -n -k1,1 | awk '{print $2, $3, $1}' \
  | xargs -P "$JOBS" -L 1 bash -c 'run_job "$@"' _
python3 scripts/experiments/summarize.py "$OUT/results.jsonl"
