#!/usr/bin/env bash
# Idempotent set-up: a Python venv inside the repo with, from PyPI,
#   torch==2.11.0        the libtorch that tch 0.24 links against (dmue-train)
#   onnxruntime==1.32.0  libonnxruntime.so for dmue-serve --engine ort, and the parity tests
#   onnx==1.23.2         the ONNX checker used by the tests
# Re-running it when everything is in place prints one line. After it, `cargo build` finds
# libtorch through .cargo/config.toml (LIBTORCH=.venv/torch), binaries carry an rpath to it,
# and ONNX Runtime is found at .venv/libonnxruntime.so: no environment variables are needed.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
ORT_VERSION=1.32.0
ONNX_VERSION=1.23.2
VENV=.venv
PY=${PYTHON:-python3}

quiet_pip() { "$VENV/bin/pip" install --disable-pip-version-check -q "$@"; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi

installed() { "$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }

have_torch=$(installed torch)
if [ "${have_torch%%+*}" != "$TORCH_VERSION" ]; then
  echo "setup: installing torch==$TORCH_VERSION from PyPI (about 4.6 GB, 1-3 minutes)" >&2
  quiet_pip "torch==$TORCH_VERSION"
fi
if [ "$(installed onnxruntime)" != "$ORT_VERSION" ] || [ "$(installed onnx)" != "$ONNX_VERSION" ]; then
  echo "setup: installing onnxruntime==$ORT_VERSION and onnx==$ONNX_VERSION from PyPI" >&2
  quiet_pip "onnxruntime==$ORT_VERSION" "onnx==$ONNX_VERSION"
fi

# A stable path for LIBTORCH, whatever the Python minor version is.
# (find_spec locates the package without importing it: importing torch takes tens of seconds.)
pkg_dir() { "$VENV/bin/python" -c "import importlib.util as u; print(u.find_spec('$1').submodule_search_locations[0])"; }
torch_dir=$(pkg_dir torch)
if [ "$(readlink "$VENV/torch" 2>/dev/null)" != "$torch_dir" ]; then
  ln -sfn "$torch_dir" "$VENV/torch"
fi

# A stable path for ONNX Runtime's shared library (what dmue-serve --engine ort loads).
ort_lib=$(ls "$(pkg_dir onnxruntime)"/capi/libonnxruntime.so* | sort | head -1)
if [ "$(readlink "$VENV/libonnxruntime.so" 2>/dev/null)" != "$ort_lib" ]; then
  ln -sfn "$ort_lib" "$VENV/libonnxruntime.so"
fi

echo "setup: ok (torch $TORCH_VERSION at $VENV/torch, onnxruntime $ORT_VERSION at $VENV/libonnxruntime.so)"
