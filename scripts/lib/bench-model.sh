# Sourced by the benchmarks: sets MODEL to a ResNet-18 (width 64, 224x224, 7 classes) unless
# MODEL is already set. It is trained for one baseline epoch on 144 synthetic faces (its
# weights do not matter for timing) and exported, so the numbers are for the paper's size.
# Needs TRAIN (the dmue-train binary) and WORK (a scratch directory).
if [ -z "${MODEL:-}" ]; then
  "$TRAIN" synth --out "$WORK/r18-data" --train 144 --test 8 --size 256 >/dev/null
  "$TRAIN" fit --data "$WORK/r18-data" --out "$WORK/r18-run" --mode baseline --epochs 1 --device cpu >/dev/null 2>&1
  "$TRAIN" export "$WORK/r18-run" -o "$WORK/r18.onnx" >/dev/null
  MODEL="$WORK/r18.onnx"
fi
