#!/usr/bin/env bash
# Regenerates the committed ONNX protobuf types (deploy/src/onnx/pb.rs) from the vendored
# deploy/src/onnx/onnx.proto (taken from PyPI's onnx 1.23.2 wheel, Apache-2.0). Only needed
# when onnx.proto changes; normal builds use the committed file and need no protoc.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
cargo run -q --manifest-path tools/protogen/Cargo.toml -- "$PWD/deploy/src/onnx/onnx.proto" "$out"
cp "$out/onnx.rs" deploy/src/onnx/pb.rs
echo "wrote deploy/src/onnx/pb.rs"
