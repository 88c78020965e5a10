#!/usr/bin/env bash
# The README's picture of dmue-serve's page: serve MODEL, upload PHOTO in Chromium, save OUT.
#   bash scripts/web-screenshot.sh runs/demo/target.onnx PHOTO docs/img/web-ui.png
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?model}; PHOTO=${2:?photo}; OUT=${3:?out.png}
bash scripts/setup-browser.sh > /dev/null
LOG=$(mktemp)
target/release/dmue-serve --model "$MODEL" --addr 127.0.0.1:0 > "$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2> /dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$LOG" && break; sleep 0.1; done
URL=$(sed -n 's/^listening on //p' "$LOG" | head -1)
mkdir -p "$(dirname "$OUT")"
node tests/web/screenshot.mjs "$URL/" "$PHOTO" "$OUT"
