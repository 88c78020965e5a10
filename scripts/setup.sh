#!/usr/bin/env bash
# Idempotent set-up: a Python venv inside the repo with, from PyPI,
#   torch==2.11.0        the libtorch that tch 0.24 links against (dmue-train)
#   onnxruntime==1.32.0  libonnxruntime.so for dmue-serve --engine ort, and the parity tests
#   onnx==1.23.2         the ONNX checker used by the tests
#   nvidia-cuda-crt==13.0.88, nvidia-cuda-cccl==13.0.85  (with a CUDA torch wheel) the CUDA
#                        headers the wheel lacks, for dmue-train's NCCL backend
# and, from Debian, libgloo-dev's headers (.venv/gloo): torch's c10d headers include them, and
# dmue-train's multi-process training is built against them (the code is torch's own).
# Re-running it when everything is in place prints one line. After it, `cargo build` finds
# libtorch through .cargo/config.toml (LIBTORCH=.venv/torch), binaries carry an rpath to it,
# and ONNX Runtime is found at .venv/libonnxruntime.so: no environment variables are needed.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
ORT_VERSION=1.32.0
ONNX_VERSION=1.23.2
CUDA_CRT_VERSION=13.0.88
CUDA_CCCL_VERSION=13.0.85
VENV=.venv
PY=${PYTHON:-python3}

# No pip cache (it would hold a second copy of torch's ~3 GB of wheels), and wheels unpack on the
# venv's own filesystem rather than in a /tmp that may be smaller.
quiet_pip() { TMPDIR="$VENV/tmp" "$VENV/bin/pip" install --disable-pip-version-check --no-cache-dir -q "$@"; }

# Free space on the venv's filesystem, in GiB, and a clear refusal when torch cannot fit.
free_gib() { df -Pk "$VENV" | awk 'NR == 2 { printf "%.1f", $4 / 1048576 }'; }
need_space() {
  local need=$1 what=$2 free
  free=$(free_gib)
  if awk -v f="$free" -v n="$need" 'BEGIN { exit !(f < n) }'; then
    echo "setup: error: $what needs about $need GiB free while it installs; $(df -P "$VENV" | awk 'NR == 2 { print $6 }') has $free GiB free. Free some space and run it again." >&2
    exit 1
  fi
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
mkdir -p "$VENV/tmp"

installed() { "$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }

have_torch=$(installed torch)
# The stamp says torch's requirements are in too (a run stopped between the two steps redoes them).
torch_stamp=$VENV/.torch-$TORCH_VERSION-complete
if [ "${have_torch%%+*}" != "$TORCH_VERSION" ] || [ ! -f "$torch_stamp" ]; then
  need_space 6.5 "torch==$TORCH_VERSION"
  echo "setup: installing torch==$TORCH_VERSION from PyPI (about 4 GB, 1-3 minutes)" >&2
  # torch's requirements from its own metadata, less triton (0.6 GB, used only by
  # torch.compile, which nothing here calls); pip's note that triton is missing is dropped.
  [ "${have_torch%%+*}" = "$TORCH_VERSION" ] || quiet_pip --no-deps "torch==$TORCH_VERSION"
  "$VENV/bin/python" - >"$VENV/tmp/torch-requirements.txt" <<'PY'
import importlib.metadata as m
for req in m.requires("torch") or []:
    name = req.split(";")[0].strip().lower()
    if "extra ==" not in req and not name.startswith("triton"):
        print(req)
PY
  if ! quiet_pip -r "$VENV/tmp/torch-requirements.txt" 2> >(grep -v -e "dependency resolver does not currently" \
      -e "dependency conflicts" -e "requires triton" >&2); then
    echo "setup: error: installing torch's requirements failed" >&2
    exit 1
  fi
  touch "$torch_stamp"
fi
# The CUDA headers the torch wheel brings lack two folders that c10d's NCCL headers include
# (dmue-train's NCCL backend): `crt/` and CCCL's `nv/`. NVIDIA publishes both on PyPI.
if [ -n "$(installed nvidia-cuda-runtime)" ] && { [ "$(installed nvidia-cuda-crt)" != "$CUDA_CRT_VERSION" ] \
    || [ "$(installed nvidia-cuda-cccl)" != "$CUDA_CCCL_VERSION" ]; }; then
  echo "setup: installing nvidia-cuda-crt==$CUDA_CRT_VERSION and nvidia-cuda-cccl==$CUDA_CCCL_VERSION from PyPI (CUDA headers, 3 MB)" >&2
  quiet_pip --no-deps "nvidia-cuda-crt==$CUDA_CRT_VERSION" "nvidia-cuda-cccl==$CUDA_CCCL_VERSION"
fi
if [ "$(installed onnxruntime)" != "$ORT_VERSION" ] || [ "$(installed onnx)" != "$ONNX_VERSION" ]; then
  echo "setup: installing onnxruntime==$ORT_VERSION and onnx==$ONNX_VERSION from PyPI" >&2
  quiet_pip "onnxruntime==$ORT_VERSION" "onnx==$ONNX_VERSION"
fi

# A stable path for LIBTORCH, whatever the Python minor version is. The links are relative to
# the venv, so they survive moving it or reaching it through another link.
# (find_spec locates the package without importing it: importing torch takes tens of seconds.)
pkg_dir() {
  "$VENV/bin/python" -c "import importlib.util as u, os, sys
print(os.path.relpath(u.find_spec('$1').submodule_search_locations[0], sys.prefix))"
}
torch_dir=$(pkg_dir torch)
if [ "$(readlink "$VENV/torch" 2>/dev/null)" != "$torch_dir" ]; then
  ln -sfn "$torch_dir" "$VENV/torch"
fi

# A stable path for ONNX Runtime's shared library (what dmue-serve --engine ort loads).
ort_dir=$(pkg_dir onnxruntime)
ort_lib=$(cd "$VENV" && ls "$ort_dir"/capi/libonnxruntime.so* | sort | head -1)
if [ "$(readlink "$VENV/libonnxruntime.so" 2>/dev/null)" != "$ort_lib" ]; then
  ln -sfn "$ort_lib" "$VENV/libonnxruntime.so"
fi

# gloo's headers for the c10d binding (train/src/dist_shim.cpp): Debian's package, unpacked
# without installing it (no root needed), checked against its known checksum.
GLOO_VERSION=0.0~git20220518.5b14351-3
GLOO_DEB=libgloo-dev_${GLOO_VERSION}_amd64.deb
GLOO_SHA256=80529c9fd8af452faf489e686b94bf87075965c40673803810c4f41634b1e299
if [ ! -f "$VENV/gloo/usr/include/gloo/config.h" ]; then
  echo "setup: fetching gloo's headers (Debian's libgloo-dev)" >&2
  tmp=$(mktemp -d)
  if (cd "$tmp" && apt-get download "libgloo-dev=$GLOO_VERSION" >/dev/null 2>&1) && [ -f "$tmp/$GLOO_DEB" ] \
     && echo "$GLOO_SHA256  $tmp/$GLOO_DEB" | sha256sum -c --quiet; then
    rm -rf "$VENV/gloo" && dpkg-deb -x "$tmp/$GLOO_DEB" "$VENV/gloo"
  else
    echo "setup: warning: could not fetch $GLOO_DEB (apt-get download libgloo-dev); dmue-train builds without multi-process training" >&2
  fi
  rm -rf "$tmp"
fi

echo "setup: ok (torch $TORCH_VERSION at $VENV/torch, onnxruntime $ORT_VERSION at $VENV/libonnxruntime.so)"
