#!/usr/bin/env bash
# Idempotent set-up: a Python venv inside the repo with PyPI's torch==2.11.0 (the libtorch
# that tch 0.24 links against). Re-running it when everything is in place prints one line.
# After it, `cargo build` finds libtorch through .cargo/config.toml (LIBTORCH=.venv/torch),
# and binaries carry an rpath to it, so no environment variables are needed.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
VENV=.venv
PY=${PYTHON:-python3}

quiet_pip() { "$VENV/bin/pip" install --disable-pip-version-check -q "$@"; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi

have_torch=$("$VENV/bin/python" - <<PYEOF 2>/dev/null || true
import importlib.metadata as m
print(m.version("torch"))
PYEOF
)
if [ "${have_torch%%+*}" != "$TORCH_VERSION" ]; then
  echo "setup: installing torch==$TORCH_VERSION from PyPI (about 4.6 GB, 1-3 minutes)" >&2
  quiet_pip "torch==$TORCH_VERSION"
fi

# A stable path for LIBTORCH, whatever the Python minor version is.
torch_dir=$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)
if [ "$(readlink "$VENV/torch" 2>/dev/null)" != "$torch_dir" ]; then
  ln -sfn "$torch_dir" "$VENV/torch"
fi

echo "setup: ok (torch $TORCH_VERSION at $VENV/torch)"
