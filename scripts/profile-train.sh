#!/usr/bin/env bash
# Where a DMUE training step's CPU time goes: `perf record` (software clock, so it works where
# hardware counters are not exposed) over two epochs of `dmue-train fit`, then a summary by
# category (scripts/lib/profile_summary.py). Defaults: the issue-9 benchmark size (width 16,
# 48x48, batch 70, 1,400 images); override like bench-train.sh.
#   scripts/profile-train.sh                  # DMUE
#   MODE=baseline scripts/profile-train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/dmue-train}
WIDTH=${WIDTH:-16}; RESIZE=${RESIZE:-54}; CROP=${CROP:-48}; BATCH=${BATCH:-70}
IMAGES=${IMAGES:-1400}; MODE=${MODE:-dmue}
command -v perf >/dev/null || { echo "profile-train: needs perf (Debian: linux-perf)" >&2; exit 1; }
export DMUE_NO_PROGRESS=1 DMUE_LOG=warn OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-ACTIVE}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$BIN" synth --out "$WORK/data" --train "$IMAGES" --test 0 --size "$RESIZE" --seed 0 >/dev/null
args=(--data "$WORK/data" --mode "$MODE" --epochs 2 --set model.width="$WIDTH"
  --set data.preprocess.resize="$RESIZE" --set data.preprocess.crop="$CROP"
  --set train.batch_size="$BATCH" --set 'data.eval_split=""')
perf record -q -e cpu-clock -F 999 -g -o "$WORK/perf.data" -- "$BIN" fit --out "$WORK/run" "${args[@]}" >/dev/null 2>&1
echo "$MODE, width $WIDTH, ${CROP}x$CROP, batch $BATCH, $IMAGES images x 2 epochs:"
python3 scripts/lib/profile_summary.py "$WORK/perf.data"
