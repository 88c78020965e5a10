#!/usr/bin/env bash
# The demo's data and training with one libtorch thread, then the sha256 of every checkpoint
# file, the exported ONNX file and the test evaluation: a refactoring that claims to change no
# behaviour must print the same checksums with the binaries before and after it.
#   bash scripts/demo-checksums.sh BIN OUT     # BIN: a dmue-train binary (copy it out of target/)
set -euo pipefail
BIN=$1; OUT=$2
rm -rf "$OUT"; mkdir -p "$OUT"
"$BIN" synth --mode photo --out "$OUT/synth-photos" --train 1300 --test 440 --seed 1 --flip-rate 0.1 > "$OUT/log" 2>&1
"$BIN" prepare --format synth --root "$OUT/synth-photos" --out "$OUT/synth" --size 128 >> "$OUT/log" 2>&1
"$BIN" fit --data "$OUT/synth" --config configs/demo-cpu.toml --out "$OUT/run" --set train.threads=1 >> "$OUT/log" 2>&1
"$BIN" eval "$OUT/run" --split test >> "$OUT/log" 2>&1
"$BIN" export "$OUT/run" -o "$OUT/run/target.onnx" >> "$OUT/log" 2>&1
cd "$OUT/run"
find checkpoints -type f | sort | xargs sha256sum
sha256sum target.onnx eval-test.json
