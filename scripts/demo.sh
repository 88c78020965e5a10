#!/usr/bin/env bash
# The main job end to end on a fresh machine (CPU is enough; a CUDA GPU is used when present):
# set-up (venv + torch/onnxruntime from PyPI), build, render the synthetic benchmark, train
# DMUE, evaluate, export the target branch to ONNX, and ask dmue-serve about a face over HTTP.
# Each phase prints its wall time. Outputs: data/synth (dataset), runs/demo (run directory),
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

phase "render the synthetic benchmark (data/synth)"
rm -rf data/synth runs/demo
"$BIN" synth --out data/synth --train 2100 --test 700 --size 128 --seed 1 --flip-rate 0.1 --preview
took render

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
FACE=data/synth/images/test/000003.png
TRUTH=$(python3 - <<'PY'
import json
classes = json.load(open("data/synth/dataset.json"))["classes"]
row = next(r for r in map(json.loads, open("data/synth/manifest.jsonl")) if r["path"] == "images/test/000003.png")
print(classes[row["label"]])
PY
)
echo "POST $URL/v1/predict  <  $FACE  (its true label: $TRUTH)"
curl -sS --fail-with-body -X POST --data-binary "@$FACE" "$URL/v1/predict" | python3 -m json.tool
echo
kill -TERM $SERVER; wait $SERVER 2>/dev/null || true
took serving

echo
echo "Look at: data/synth/preview.png, runs/demo/curves.png, runs/demo/confusion-test.png"
echo "Serve the model yourself: $SERVE --model runs/demo/target.onnx   (then POST images to /v1/predict)"
