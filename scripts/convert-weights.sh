#!/usr/bin/env bash
# Converts a PyTorch checkpoint into safetensors for `dmue-train fit --init`, with the .venv
# torch that scripts/setup.sh installs (Rust code never unpickles).
#   bash scripts/convert-weights.sh IN.pth OUT.safetensors
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -ne 2 ]; then
  echo "usage: $0 IN.pth OUT.safetensors" >&2
  exit 2
fi
PY="$root/.venv/bin/python"
[ -x "$PY" ] || { echo "convert-weights: run scripts/setup.sh first (needs the .venv torch)" >&2; exit 1; }
exec "$PY" "$root/scripts/lib/convert_weights.py" "$1" "$2"
