#!/usr/bin/env bash
# int8 against float32, one run: `dmue-train export RUN --int8` on a trained run (size, test
# accuracy of both through the same engine, agreement, largest logit difference), then p50
# latency and throughput of both files through dmue-serve's ort and tract engines at batch 1
# and 8, 1 and 2 threads; the same timings for a paper-size ResNet-18 (width 64, 224x224,
# weights from one epoch on 144 faces: timing only), with ONNX Runtime's own static quantizer
# on the same file as the reference measured in the same run; the photo path (decode + detect + align +
# classify, bench-photo's measurement) with each classifier; and the label of the demo's test
# photo under each. Prints tables and int8/float32 ratios.
#
#   scripts/bench-int8.sh                      # RUN=runs/demo (made by scripts/demo.sh)
#   RUN=runs/mnv2-224 scripts/bench-int8.sh
#
# Nothing else should run meanwhile: shared cores distort the timings.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/demo}
ITERS=${ITERS:-100}
PHOTO=${PHOTO:-data/synth-photos/images/test/000001.png}
TRAIN=target/release/dmue-train; SERVE=target/release/dmue-serve
export DMUE_NO_PROGRESS=1 DMUE_LOG=warn
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
[ -f "$RUN/config.toml" ] || { echo "bench-int8: $RUN is not a run directory (scripts/demo.sh makes runs/demo)" >&2; exit 1; }
echo "run: $RUN, machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

echo; echo "== export --int8 ($RUN)"
"$TRAIN" export "$RUN" -o "$WORK/run.onnx" --int8 | sed -n '/^int8 model/,$p'
cp "$RUN/int8.json" "$WORK/run-int8.json"

echo; echo "== paper-size ResNet-18 (224x224; one epoch on 144 faces: timing only)"
"$TRAIN" synth --out "$WORK/r18-data" --train 144 --test 8 --size 256 >/dev/null
"$TRAIN" fit --data "$WORK/r18-data" --out "$WORK/r18-run" --mode baseline --epochs 1 --device cpu >/dev/null 2>&1
"$TRAIN" export "$WORK/r18-run" -o "$WORK/r18.onnx" --int8 --calibration-images 144 | sed -n '/file size/p'

# The reference in the same run: ONNX Runtime's own static quantizer (QDQ, per-channel int8
# weights with reduce_range, uint8 activations) on the same float32 file; speed only.
.venv/bin/python - "$WORK/r18.onnx" "$WORK/r18-ortq.onnx" <<'PY' 2>/dev/null
import sys, numpy as np
from onnxruntime.quantization import quantize_static, CalibrationDataReader, QuantFormat, QuantType
rng = np.random.RandomState(0)
class R(CalibrationDataReader):
    def __init__(s): s.i = 0
    def get_next(s):
        s.i += 1
        return None if s.i > 16 else {"input": rng.randn(1, 3, 224, 224).astype(np.float32)}
quantize_static(sys.argv[1], sys.argv[2], R(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
PY

RESULTS="$WORK/results.jsonl"
bench() {  # bench NAME FILE PRECISION ENGINE THREADS BATCH
  "$SERVE" --model "$2" --engine "$4" --threads "$5" bench --batch "$6" --iters "$ITERS" 2> >(grep -v "is an int8 model" >&2) \
    | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r.update(model='$1', precision='$3', bytes=$(stat -c %s "$2")); print(json.dumps(r))" >> "$RESULTS"
}
for name in run r18; do
  for engine in ort tract; do
    for threads in 1 2; do
      for batch in 1 8; do
        bench "$name" "$WORK/$name.onnx" float32 "$engine" "$threads" "$batch"
        bench "$name" "$WORK/$name.int8.onnx" int8 "$engine" "$threads" "$batch"
      done
    done
  done
done

for threads in 1 2; do
  for batch in 1 8; do
    bench r18 "$WORK/r18-ortq.onnx" ortq ort "$threads" "$batch"
  done
done

PHOTOS="$WORK/photo.jsonl"
if [ -f "$PHOTO" ]; then
  for m in run.onnx run.int8.onnx r18.onnx r18.int8.onnx; do
    "$SERVE" --model "$WORK/$m" --engine ort --threads 2 bench --photo "$PHOTO" --iters 40 --warmup 5 \
      | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['model']='$m'; print(json.dumps(r))" >> "$PHOTOS"
    "$SERVE" --model "$WORK/$m" --engine ort predict --format jsonl "$PHOTO" \
      | python3 -c "import json,sys; r=json.loads(sys.stdin.readline()); print(json.dumps({'model':'$m','labels':[f['label'] for f in r.get('faces',[r])]}))" >> "$WORK/labels.jsonl"
  done
else
  echo "(no $PHOTO: photo path skipped; scripts/demo.sh renders it)"
fi

python3 - "$RESULTS" "$WORK/run-int8.json" "$PHOTOS" "$WORK/labels.jsonl" <<'PY'
import json, os, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
report = json.load(open(sys.argv[2]))
key = lambda r: (r["model"], r["engine"], r["threads"], r["batch"])
fp = {key(r): r for r in rows if r["precision"] == "float32"}
print(f"\n{'model':<6} {'engine':<6} {'threads':>7} {'batch':>5} {'fp32 p50 ms':>12} {'int8 p50 ms':>12} {'fp32 img/s':>11} {'int8 img/s':>11} {'speed-up':>9}")
for r in rows:
    if r["precision"] != "int8":
        continue
    f = fp[key(r)]
    print(f"{r['model']:<6} {r['engine']:<6} {r['threads']:>7} {r['batch']:>5} {f['p50_ms']:>12.2f} {r['p50_ms']:>12.2f} "
          f"{f['images_per_s']:>11.1f} {r['images_per_s']:>11.1f} {f['p50_ms'] / r['p50_ms']:>8.2f}x")
ortq = {key(r): r for r in rows if r["precision"] == "ortq"}
ours = {key(r): r for r in rows if r["precision"] == "int8"}
print(f"\nr18 through ort: ours against ONNX Runtime's own quantizer on the same float32 file")
for k, r in ortq.items():
    print(f"  threads {k[2]} batch {k[3]}: ours {ours[k]['p50_ms']:.2f} ms, onnxruntime.quantization {r['p50_ms']:.2f} ms "
          f"(ratio {r['p50_ms'] / ours[k]['p50_ms']:.2f}), float32 {fp[k]['p50_ms']:.2f} ms")
sizes = {}
for r in rows:
    sizes[(r["model"], r["precision"])] = r["bytes"]
print(f"file size r18, onnxruntime.quantization: {sizes[('r18', 'ortq')] / 1e6:.2f} MB")
for m in ["run", "r18"]:
    a, b = sizes[(m, "float32")], sizes[(m, "int8")]
    print(f"file size {m}: float32 {a / 1e6:.2f} MB, int8 {b / 1e6:.2f} MB ({a / b:.2f}x smaller)")
t = report.get("test")
if t:
    print(f"test accuracy ({t['images']} images, {report['engine']}): float32 {100 * t['fp32_accuracy']:.2f} %, "
          f"int8 {100 * t['int8_accuracy']:.2f} % ({report['method']}); same class on {100 * t['agreement']:.2f} %; "
          f"largest logit difference {t['max_logit_diff']:.3f}")
if os.path.exists(sys.argv[3]):
    print(f"\n{'photo path (ort, 2 threads)':<28} {'faces':>5} {'decode+detect+align p50 ms':>27} {'total p50 ms':>13}")
    for l in open(sys.argv[3]):
        r = json.loads(l)
        print(f"{r['model']:<28} {r['faces']:>5} {r['decode_detect_align_p50_ms']:>27.1f} {r['p50_ms']:>13.1f}")
    labels = {json.loads(l)["model"]: json.loads(l)["labels"] for l in open(sys.argv[4])}
    for m in ["run", "r18"]:
        a, b = labels[f"{m}.onnx"], labels[f"{m}.int8.onnx"]
        print(f"labels on the photo, {m}: float32 {a}, int8 {b}: {'same' if a == b else 'DIFFERENT'}")
PY
