#!/usr/bin/env bash
# Training throughput of `dmue-train fit` (the real loop: sampling, augmentation, all losses,
# NaN checks, Adam), DMUE against the plain-CE baseline on the same backbone, measured in the
# same run. Reports images/s of the last epoch (the first one warms up), the ratios, and the
# ratio of the two networks' FLOPs per training step (DMUE can be no faster than its work).
#
#   scripts/bench-train.sh                          # paper setting: ResNet-18, 224x224, batch 72
#   WIDTH=16 RESIZE=72 CROP=64 IMAGES=700 scripts/bench-train.sh   # the CPU demo's setting
#
# On the GPU machine (nothing installed there): carry target/release/dmue-train; libtorch is
# found through the machine's own PyTorch when the binary's rpath does not resolve.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/dmue-train}
WIDTH=${WIDTH:-64}; RESIZE=${RESIZE:-256}; CROP=${CROP:-224}; BATCH=${BATCH:-72}
IMAGES=${IMAGES:-1440}; EPOCHS=${EPOCHS:-2}; DEVICE=${DEVICE:-auto}
if ldd "$BIN" | grep -q "libtorch.*not found"; then
  LD_LIBRARY_PATH="$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib:${LD_LIBRARY_PATH:-}"
  export LD_LIBRARY_PATH
fi
export DMUE_NO_PROGRESS=1 TORCH_CPP_LOG_LEVEL=ERROR
# A fixed OpenMP wait policy: dmue-train otherwise picks one from the load average at start-up,
# which the previous run of this script raises (docs/performance.md, "Shared cores").
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-ACTIVE}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$BIN" synth --out "$WORK/data" --train "$IMAGES" --test 0 --size "$RESIZE" --seed 0 >/dev/null

cuda=$("$BIN" fit --data "$WORK/data" --out "$WORK/probe" --device "$DEVICE" --epochs 1 \
  --set model.width=4 --set data.preprocess.resize=36 --set data.preprocess.crop=32 --set train.batch_size=14 \
  --set 'data.eval_split=""' 2>&1 | grep -c "on Cuda" || true)
precisions="fp32"; [ "$cuda" -gt 0 ] && precisions="fp32 bf16"

rate() {  # mode precision -> img/s of the last epoch
  local out="$WORK/run-$1-$2"
  "$BIN" fit --data "$WORK/data" --out "$out" --device "$DEVICE" --mode "$1" --epochs "$EPOCHS" \
    --set model.width="$WIDTH" --set data.preprocess.resize="$RESIZE" --set data.preprocess.crop="$CROP" \
    --set train.batch_size="$BATCH" --set train.precision="\"$2\"" --set 'data.eval_split=""' >"$out.log" 2>&1 \
    || { cat "$out.log" >&2; exit 1; }
  python3 -c "import json,sys; print(round(json.loads(open(sys.argv[1]).read().splitlines()[-1])['images_per_second'], 1))" "$out/metrics.jsonl"
}

echo "device=$DEVICE (cuda seen: $([ "$cuda" -gt 0 ] && echo yes || echo no)) width=$WIDTH crop=$CROP batch=$BATCH images/epoch=$IMAGES epochs=$EPOCHS"
printf '%-10s %-6s %10s\n' mode prec "img/s"
for p in $precisions; do
  base=$(rate baseline "$p"); dmue=$(rate dmue "$p")
  printf '%-10s %-6s %10s\n' baseline "$p" "$base" dmue "$p" "$dmue"
  python3 -c "import sys; print(f'  dmue/baseline throughput ratio ({sys.argv[3]}): {float(sys.argv[2])/float(sys.argv[1]):.3f}')" "$base" "$dmue" "$p"
  time_ratio=$(python3 -c "import sys; print(float(sys.argv[1])/float(sys.argv[2]))" "$base" "$dmue")
done

# The work ratio to hold the time ratio against: FLOPs of one training step of each network,
# counted by PyTorch on an independent ResNet-18 (needs torch: the repo's .venv or the machine's).
PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python
if flops=$("$PY" scripts/lib/train_flops.py "$WIDTH" "$CROP" "$BATCH" 7 2>/dev/null); then
  "$PY" -c "import json, sys; f = json.loads(sys.argv[1]); t = float(sys.argv[2]); print(f\"  FLOPs per step: baseline {f['baseline_gflops']} G, dmue {f['dmue_gflops']} G; FLOP ratio {f['flop_ratio']:.3f}, time ratio (last precision) {t:.3f}, time/FLOP {t / f['flop_ratio']:.3f}\")" "$flops" "$time_ratio"
else
  echo "  (FLOP ratio not computed: no Python with torch)"
fi
