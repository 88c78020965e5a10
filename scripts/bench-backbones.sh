#!/usr/bin/env bash
# The backbones of paper Tables 6-7 side by side: parameters and MACs of the exported target
# network at 224x224 and at the demo size (64x64), ONNX file size, and single-image CPU latency
# (p50, batch 1, one thread) through dmue-serve's tract and ort engines, in one run on this
# machine. Each backbone (standard width, 7 classes) is trained for one baseline epoch on 144
# synthetic faces (weights do not matter for size or timing) and exported.
#
#   bash scripts/bench-backbones.sh            # prints a Markdown table (docs/backbones.md)
#   BACKBONES="resnet18 mobilenet_v2" ITERS=50 bash scripts/bench-backbones.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BACKBONES=${BACKBONES:-"resnet18 mobilenet_v2 shufflenet_v1 resnet50_ibn"}
ITERS=${ITERS:-50}
TRAIN=target/release/dmue-train; SERVE=target/release/dmue-serve
export DMUE_NO_PROGRESS=1 DMUE_LOG=warn
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); threads 1; $ITERS iterations" >&2
"$TRAIN" synth --out "$WORK/data" --train 144 --test 8 --size 256 >/dev/null

field() { sed -n "s/^  $1 *\([0-9]*\) .*/\1/p"; }
p50() { "$SERVE" --model "$1" --engine "$2" --threads 1 bench --batch 1 --iters "$ITERS" \
  | python3 -c "import json,sys; print('%.2f' % json.loads(sys.stdin.readline())['p50_ms'])"; }

echo "| backbone | parameters | MACs at 224 | MACs at 64 | ONNX size at 224 | tract p50 (224, batch 1) | ort p50 (224, batch 1) |"
echo "|---|---|---|---|---|---|---|"
for b in $BACKBONES; do
  for crop in 224 64; do
    resize=$(( crop * 8 / 7 ))
    "$TRAIN" fit --data "$WORK/data" --out "$WORK/$b-$crop" --mode baseline --epochs 1 --device cpu \
      --backbone "$b" --set "data.preprocess.resize=$resize" --set "data.preprocess.crop=$crop" \
      --set train.batch_size=16 >/dev/null 2>&1
    "$TRAIN" export "$WORK/$b-$crop" -o "$WORK/$b-$crop.onnx" > "$WORK/$b-$crop.txt"
  done
  params=$(field "parameters (BatchNorm folded)" < "$WORK/$b-224.txt")
  macs224=$(sed -n 's/^  MACs per image at 224x224 *\([0-9]*\) .*/\1/p' "$WORK/$b-224.txt")
  macs64=$(sed -n 's/^  MACs per image at 64x64 *\([0-9]*\) .*/\1/p' "$WORK/$b-64.txt")
  size=$(stat -c %s "$WORK/$b-224.onnx")
  python3 -c 'import sys; b, p, m224, m64, size, t, o = sys.argv[1:]
print(f"| {b} | {int(p)/1e6:.2f} M | {int(m224)/1e6:.0f} M | {int(m64)/1e6:.1f} M | {int(size)/1e6:.1f} MB | {t} ms | {o} ms |")' \
    "$b" "$params" "$macs224" "$macs64" "$size" "$(p50 "$WORK/$b-224.onnx" tract)" "$(p50 "$WORK/$b-224.onnx" ort)"
done
