#!/usr/bin/env bash
# The main job end to end on a fresh machine (CPU is enough; a CUDA GPU is used when present):
# set-up (venv + torch/onnxruntime from PyPI), build, render synthetic photos, prepare them
# (detect, align, crop), train DMUE, evaluate, export the target branch to ONNX, and ask
# dmue-serve about a photo over HTTP. Each phase prints its wall time. Outputs:
# data/synth-photos (raw photos), data/synth (aligned crops), runs/demo (run directory),
# runs/demo/target.onnx (the deployable model).
set -euo pipefail
cd "$(dirname "$0")/.."

phase() { printf '\n== %s\n' "$1"; PHASE_START=$(date +%s); }
took() { echo "   ($1: $(( $(date +%s) - PHASE_START )) s)"; }

phase "set-up"
bash scripts/setup.sh
bash scripts/fetch-models.sh
took set-up

phase "build (cargo build --release)"
cargo build --release --bin dmue-train --bin dmue-serve
took build
BIN=target/release/dmue-train
SERVE=target/release/dmue-serve

phase "render synthetic photos (data/synth-photos: 640x480, 1-3 rotated, scaled faces each)"
rm -rf data/synth-photos data/synth runs/demo
"$BIN" synth --mode photo --out data/synth-photos --train 1300 --test 440 --seed 1 --flip-rate 0.1 --preview
took render

phase "prepare: detect, align and crop every face as dmue-serve will (data/synth)"
"$BIN" prepare --format synth --root data/synth-photos --out data/synth --size 128
took prepare

phase "train DMUE (runs/demo)"
"$BIN" fit --data data/synth --config configs/demo-cpu.toml --out runs/demo
took training

phase "evaluate the newest checkpoint on the clean test split"
"$BIN" eval runs/demo --split test
took evaluation

phase "export the target branch to ONNX (runs/demo/target.onnx)"
"$BIN" export runs/demo -o runs/demo/target.onnx
took export

phase "serve it and send a test face over HTTP"
"$SERVE" --model runs/demo/target.onnx --addr 127.0.0.1:0 > runs/demo/serve.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "listening on" runs/demo/serve.log && break; sleep 0.1; done
URL=$(sed -n 's/^listening on //p' runs/demo/serve.log | head -1)
PHOTO=data/synth-photos/images/test/000001.png
echo "the faces in $PHOTO, left to right, as rendered:"
python3 - "$PHOTO" <<'PY'
import json, sys
classes = json.load(open("data/synth-photos/dataset.json"))["classes"]
row = next(r for r in map(json.loads, open("data/synth-photos/photos.jsonl")) if sys.argv[1].endswith(r["path"]))
for f in sorted(row["faces"], key=lambda f: f["landmarks"][2][0]):
    nose = f["landmarks"][2]
    print(f"  nose at ({nose[0]:.0f}, {nose[1]:.0f}): {classes[f['label']]}, true mixture",
          {classes[k]: round(v, 2) for k, v in enumerate(f["truth"]["mixture"]) if v > 0.05})
PY
echo "POST $URL/v1/predict  <  $PHOTO"
# The answer, with each list of numbers on one line.
curl -sS --fail-with-body -X POST --data-binary "@$PHOTO" "$URL/v1/predict" | python3 -c '
import json, re, sys
text = json.dumps(json.load(sys.stdin), indent=2)
print(re.sub(r"\[[\s\d.,e+-]*\]", lambda m: " ".join(m.group(0).split()).replace("[ ", "[").replace(" ]", "]"), text))'

echo
kill -TERM $SERVER; wait $SERVER 2>/dev/null || true
took serving

echo
echo "Look at: data/synth-photos/preview.png, data/synth/images/ (the aligned crops), data/synth/prepare-report.json,"
echo "          runs/demo/curves.png, runs/demo/confusion-test.png"
echo "Serve the model yourself: $SERVE --model runs/demo/target.onnx   (then POST images to /v1/predict)"
