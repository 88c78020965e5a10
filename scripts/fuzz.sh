#!/usr/bin/env bash
# Runs dmue-serve's two fuzz targets (deploy/fuzz) side by side for SECONDS each, one libFuzzer
# job per target at a lowered priority (so they can run beside light work), and prints each
# target's executions, coverage and findings. Resumable: new inputs go to runs/fuzz/<target>,
# which the next run starts from; the committed seeds (deploy/fuzz/corpus/<target>) come second.
# A crash, sanitizer report or failed invariant leaves its input in runs/fuzz/findings/.
#
#   scripts/fuzz.sh 3600                 # an hour; needs the nightly toolchain and cargo-fuzz
#   SANITIZER=address scripts/fuzz.sh 600
#
# SANITIZER: `none` (default) or `address`. dmue-deploy and its decoders are safe Rust, so
# AddressSanitizer mostly costs speed here (the image path ran at 173-192 executions a second
# under it with 2,048-px decode limits; without it, with today's 512-px limits, at 360-440); the
# overflow checks and debug assertions stay on either way. docs/reliability.md has the runs so far.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-600}
SANITIZER=${SANITIZER:-none}
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null || { echo "fuzz: needs cargo-fuzz (cargo install cargo-fuzz) and a nightly toolchain" >&2; exit 1; }
mkdir -p runs/fuzz/image_path runs/fuzz/request runs/fuzz/findings runs/fuzz/logs
(cd deploy && cargo +nightly fuzz build -s "$SANITIZER" image_path \
   && cargo +nightly fuzz build -s "$SANITIZER" --features request request)
BIN=deploy/fuzz/target/x86_64-unknown-linux-gnu/release
stamp=$(date +%Y%m%d-%H%M%S)
pids=()
for t in image_path request; do
  nice -n 10 "$BIN/$t" "runs/fuzz/$t" "deploy/fuzz/corpus/$t" -max_total_time="$SECONDS_EACH" \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="runs/fuzz/findings/$t-" \
    >"runs/fuzz/logs/$t-$stamp.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for t in image_path request; do
  log="runs/fuzz/logs/$t-$stamp.log"
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  echo "$t: ${runs:-?} executions in ${SECONDS_EACH} s, $cov, corpus $(ls "runs/fuzz/$t" | wc -l) inputs ($log)"
done
ls runs/fuzz/findings | grep . && { echo "fuzz: findings in runs/fuzz/findings (above)"; exit 1; }
[ "$status" = 0 ] || { echo "fuzz: a fuzzer stopped with an error: see the logs" >&2; exit 1; }
echo "no findings"
