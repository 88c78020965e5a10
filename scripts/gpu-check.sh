#!/usr/bin/env bash
# GPU figures for the training step in one device call (under 8 minutes on an H100/H200):
#   1. dmue-train's own loop (scripts/bench-train.sh): baseline and DMUE img/s at the paper size
#      (ResNet-18 width 64, 224x224, batch 72), fp32 and bf16 autocast;
#   2. PyTorch eager on the same GPU in the same call (scripts/lib/eager_step.py, the same
#      networks built from train/tests/torch_reference.py): baseline and DMUE, fp32 and bf16,
#      NCHW and channels-last;
#   3. the FLOP ratio of the two networks (scripts/lib/train_flops.py).
# The device machine has Python with torch 2.11 (CUDA) but not this repository's .venv, so build
# here and carry the binary:
#   cargo build --release --workspace
#   device run: carry ["target/release/dmue-train"], command "bash scripts/gpu-check.sh",
#   timeout_s 540
# Without a GPU it runs the same steps on the CPU at a small size (a smoke test) and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  SIZE=(WIDTH=64 RESIZE=256 CROP=224 BATCH=72 IMAGES=2880 EPOCHS=2)
  EAGER=(--width 64 --crop 224 --batch 72 --steps 20)
else
  echo "gpu-check: no GPU here; a CPU smoke test at width 8, 64x64, batch 16 (not a measurement)"
  SIZE=(WIDTH=8 RESIZE=72 CROP=64 BATCH=16 IMAGES=64 EPOCHS=2)
  EAGER=(--width 8 --crop 64 --batch 16 --steps 2)
fi
echo "== dmue-train (scripts/bench-train.sh)"
timeout 300 env "${SIZE[@]}" bash scripts/bench-train.sh
echo "== PyTorch eager (scripts/lib/eager_step.py)"
timeout 180 "$PY" scripts/lib/eager_step.py "${EAGER[@]}"
echo "== FLOPs per step"
w=${SIZE[0]#WIDTH=}; crop=${SIZE[2]#CROP=}; batch=${SIZE[3]#BATCH=}
timeout 60 "$PY" scripts/lib/train_flops.py "$w" "$crop" "$batch" 7
