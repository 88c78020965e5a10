#!/usr/bin/env bash
# The main job end to end on a fresh machine (CPU is enough; a CUDA GPU is used when present):
# set-up (venv + torch from PyPI), build, render the synthetic benchmark, train DMUE, evaluate.
# Each phase prints its wall time. Outputs: data/synth (dataset), runs/demo (run directory).
set -euo pipefail
cd "$(dirname "$0")/.."

phase() { printf '\n== %s\n' "$1"; PHASE_START=$(date +%s); }
took() { echo "   ($1: $(( $(date +%s) - PHASE_START )) s)"; }

phase "set-up"
bash scripts/setup.sh
took set-up

phase "build (cargo build --release)"
cargo build --release --bin dmue-train
took build
BIN=target/release/dmue-train

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
echo
echo "Look at: data/synth/preview.png, runs/demo/curves.png, runs/demo/confusion-test.png"
