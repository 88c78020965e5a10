#!/usr/bin/env bash
# dlib's face-recognition ResNet (face-resnet) next to ResNet-18 (width 64) at the same input,
# 150x150 (dlib's chip size; resize 171, crop 150), in one run on this machine:
# - CPU training throughput (img/s of the second of two epochs, 2 libtorch threads) in the
#   baseline mode and in DMUE (7 auxiliary branches), on 700 synthetic faces;
# - single-image latency of the exported model (p50, batch 1, one thread) through dmue-serve's
#   tract and ort engines.
# Prints a Markdown table and the face-resnet / ResNet-18 ratios (docs/performance.md).
#
#   bash scripts/bench-face-trunk.sh
#   ITERS=100 THREADS=1 bash scripts/bench-face-trunk.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS=${ITERS:-50}
THREADS=${THREADS:-2}
TRAIN=target/release/dmue-train; SERVE=target/release/dmue-serve
export DMUE_NO_PROGRESS=1 DMUE_LOG=info
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
flags=$(grep -m1 '^flags' /proc/cpuinfo)
isa=$( [[ $flags == *avx512_vnni* ]] && echo "AVX-512 VNNI" || { [[ $flags == *avx2* ]] && echo AVX2 || echo "no AVX2"; })
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $isa; training $THREADS threads, inference 1 thread, $ITERS iterations"
"$TRAIN" synth --out "$WORK/data" --train 700 --test 14 --size 171 --seed 7 >/dev/null

# img/s of the last epoch line of a fit.
train_ips() {
  "$TRAIN" fit --data "$WORK/data" --out "$WORK/$1-$2" --mode "$2" --epochs 2 --device cpu \
    "${@:3}" --set train.batch_size=70 --set "train.threads=$THREADS" 2>&1 \
    | sed -n 's/.*epoch *2\/2 .* \([0-9.]*\) img\/s.*/\1/p' | tail -1
}
p50() { "$SERVE" --model "$1" --engine "$2" --threads 1 bench --batch 1 --iters "$ITERS" \
  | python3 -c "import json,sys; print('%.2f' % json.loads(sys.stdin.readline())['p50_ms'])"; }

declare -A r
for b in face-resnet resnet18; do
  if [ "$b" = face-resnet ]; then args=(--init face); else args=(--backbone resnet18 --set data.preprocess.resize=171 --set data.preprocess.crop=150); fi
  r[$b,baseline]=$(train_ips "$b" baseline "${args[@]}")
  r[$b,dmue]=$(train_ips "$b" dmue "${args[@]}")
  "$TRAIN" export "$WORK/$b-baseline" -o "$WORK/$b.onnx" > "$WORK/$b-export.txt"
  r[$b,params]=$(sed -n 's/^  parameters (BatchNorm folded) *\([0-9]*\) .*/\1/p' "$WORK/$b-export.txt")
  r[$b,macs]=$(sed -n 's/^  MACs per image at 150x150 *\([0-9]*\) .*/\1/p' "$WORK/$b-export.txt")
  r[$b,tract]=$(p50 "$WORK/$b.onnx" tract)
  r[$b,ort]=$(p50 "$WORK/$b.onnx" ort)
done
python3 - "${r[face-resnet,baseline]}" "${r[face-resnet,dmue]}" "${r[face-resnet,params]}" "${r[face-resnet,macs]}" \
  "${r[face-resnet,tract]}" "${r[face-resnet,ort]}" "${r[resnet18,baseline]}" "${r[resnet18,dmue]}" \
  "${r[resnet18,params]}" "${r[resnet18,macs]}" "${r[resnet18,tract]}" "${r[resnet18,ort]}" <<'PY'
import sys
v = [float(x) for x in sys.argv[1:]]
f, r = v[:6], v[6:]
print("| backbone (150x150, 7 classes) | parameters | MACs | train img/s baseline | train img/s DMUE | tract p50 | ort p50 |")
print("|---|---|---|---|---|---|---|")
for name, x in (("face-resnet", f), ("resnet18", r)):
    print(f"| {name} | {x[2]/1e6:.2f} M | {x[3]/1e6:.0f} M | {x[0]:.0f} | {x[1]:.0f} | {x[4]:.2f} ms | {x[5]:.2f} ms |")
print(f"| ratio face-resnet / resnet18 | {f[2]/r[2]:.2f} | {f[3]/r[3]:.2f} | {f[0]/r[0]:.2f} | {f[1]/r[1]:.2f} | {f[4]/r[4]:.2f} | {f[5]/r[5]:.2f} |")
PY
