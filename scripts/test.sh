#!/usr/bin/env bash
# The whole test suite: set-up, formatting, lints, then every test of the workspace in the
# release profile (the same build the demo uses). Tests that need a GPU skip themselves and
# say so when libtorch sees no CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
export DMUE_NO_PROGRESS=1
cargo test --release --workspace
