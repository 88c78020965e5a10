#!/usr/bin/env bash
# The photo path, one run: decode + detect + align (+ classify) one face in a 640x480 photo,
# p50 over ITERS runs, for dmue-serve's tract and ort engines with 1 and 2 threads; then the
# baseline in the same run: ort with spinning thread pools (ONNX Runtime's default, which
# dmue-serve turns off; DMUE_ORT_SPIN=1 turns it back on). Prints a table and the ratios.
#
#   scripts/bench-photo.sh                 # ResNet-18 (width 64) at 224x224, 7 classes
#   MODEL=runs/demo/target.onnx PHOTO=my.jpg scripts/bench-photo.sh
#
# The photo is a synthetic 640x480 one-face photo (`dmue-train synth --mode photo`) unless
# PHOTO is set. The target: detect + align + classify one face <= 60 ms p50, 2 cores, ort.
#
#   GROUP=1 scripts/bench-photo.sh         # a 3000x2000 group photo of 30 faces of 60-100 px
#
# GROUP=1 times the crowded photo of the detection test (tests/examples/group_photo.rs) at the
# defaults (the detector input follows the photo, up to --det-max-size 3200) against the fixed
# 640 input of before (--det-max-size 640) in the same run, with both engines at 2 threads, and
# prints the faces each finds.
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS=${ITERS:-40}
TRAIN=target/release/dmue-train; SERVE=target/release/dmue-serve
export DMUE_NO_PROGRESS=1 DMUE_LOG=warn
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
source scripts/lib/bench-model.sh
if [ "${GROUP:-0}" = 1 ]; then
  cargo build --release --workspace --example group_photo -q
  PHOTO="$WORK/group.jpg"
  target/release/examples/group_photo "$PHOTO" 3000 2000 30 >/dev/null
elif [ -z "${PHOTO:-}" ]; then
  "$TRAIN" synth --mode photo --max-faces 1 --out "$WORK/photo" --train 0 --test 1 --seed 2 >/dev/null
  PHOTO="$WORK/photo/images/test/000000.png"
fi
echo "model: $MODEL, photo: $PHOTO, machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

RESULTS="$WORK/results.jsonl"
run() { "$SERVE" --model "$MODEL" --engine "$1" --threads "$2" bench --photo "$PHOTO" --iters "$ITERS" --warmup 5 "${@:4}" \
          | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['label']='$3'; print(json.dumps(r))" >> "$RESULTS"; }
if [ "${GROUP:-0}" = 1 ]; then
  for e in ort tract; do
    run "$e" 2 "$e, defaults"
    run "$e" 2 "$e, fixed 640 (baseline)" --det-max-size 640
  done
else
  for t in 1 2; do
    run tract "$t" "tract"
    run ort "$t" "ort"
    DMUE_ORT_SPIN=1 run ort "$t" "ort, spinning pools (baseline)"
  done
fi

python3 - "$RESULTS" "${GROUP:-0}" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
group = sys.argv[2] == "1"
label = "engine, detector input" if group else "engine"
print(f"{label:<32} {'threads':>7} {'faces':>5} {'decode+detect+align p50 ms':>27} {'total p50 ms':>13} {'p99 ms':>8}")
for r in rows:
    print(f"{r['label']:<32} {r['threads']:>7} {r['faces']:>5} {r['decode_detect_align_p50_ms']:>27.1f} {r['p50_ms']:>13.1f} {r['p99_ms']:>8.1f}")
if group:
    for e in ("ort", "tract"):
        d, b = (next(r for r in rows if r["label"] == f"{e}, {k}") for k in ("defaults", "fixed 640 (baseline)"))
        print(f"ratio {e}, defaults / fixed 640, total p50: {d['p50_ms'] / b['p50_ms']:.2f} ({d['faces']} faces against {b['faces']} of 30)")
    sys.exit(0)
get = lambda label, t: next(r for r in rows if r["label"] == label and r["threads"] == t)
ort2, base2 = get("ort", 2), get("ort, spinning pools (baseline)", 2)
print(f"ratio ort / baseline (spinning), 2 threads, total p50: {ort2['p50_ms'] / base2['p50_ms']:.3f}")
print(f"ratio ort 2 threads / 1 thread, total p50:             {ort2['p50_ms'] / get('ort', 1)['p50_ms']:.3f}")
print(f"ratio tract / ort, 2 threads, total p50:               {get('tract', 2)['p50_ms'] / ort2['p50_ms']:.3f}")
print(f"ort, 2 threads: {ort2['p50_ms']:.1f} ms p50 against the 60 ms target: {ort2['p50_ms'] / 60:.3f}")
PY
