#!/usr/bin/env bash
# Inference benchmark, one run, one ONNX file: latency p50/p99 at batch 1 and throughput at
# batch 8 for dmue-serve's tract engine, its ort engine, and onnxruntime from Python (the
# baseline), all single-threaded unless THREADS is set; then /v1/predict over HTTP in two rows:
# a face crop to a server with --no-detect (round trip minus the decode and inference times the
# server reports: the HTTP overhead) and a 640x480 photo with detection on. Prints ratios.
#
#   scripts/bench-infer.sh                 # ResNet-18 (width 64) at 224x224, 7 classes
#   MODEL=runs/demo/target.onnx scripts/bench-infer.sh
#
# Without MODEL, a ResNet-18 is trained for one baseline epoch on 144 synthetic faces (its
# weights do not matter for timing) and exported, so the numbers are for the paper's size.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-1}; ITERS=${ITERS:-100}
TRAIN=target/release/dmue-train; SERVE=target/release/dmue-serve
PY=.venv/bin/python
export DMUE_NO_PROGRESS=1 DMUE_LOG=warn
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"; [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null || true' EXIT

source scripts/lib/bench-model.sh
echo "model: $MODEL, threads: $THREADS, machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

rust_bench() { "$SERVE" --model "$MODEL" --engine "$1" --threads "$THREADS" bench --batch "$2" --iters "$ITERS"; }
py_bench() {
  "$PY" - "$MODEL" "$1" "$THREADS" "$ITERS" <<'PY'
import json, sys, time
import numpy as np, onnxruntime as ort
path, batch, threads, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
crop = s.get_inputs()[0].shape[2]
x = (np.arange(batch * 3 * crop * crop, dtype=np.uint64) * 2654435761 % 2001).astype(np.float32).reshape(batch, 3, crop, crop) / 1000 - 1
for _ in range(20):
    s.run(["logits"], {"input": x})
ms = []
for _ in range(iters):
    t = time.perf_counter(); s.run(["logits"], {"input": x}); ms.append((time.perf_counter() - t) * 1e3)
ms.sort()
mean = sum(ms) / len(ms)
print(json.dumps({"engine": "python-onnxruntime", "batch": batch, "p50_ms": ms[round((len(ms) - 1) * 0.5)],
                  "p99_ms": ms[round((len(ms) - 1) * 0.99)], "mean_ms": mean, "images_per_s": batch * 1e3 / mean}))
PY
}

RESULTS="$WORK/results.jsonl"
for b in 1 8; do
  py_bench "$b" >> "$RESULTS"
  rust_bench ort "$b" >> "$RESULTS"
  rust_bench tract "$b" >> "$RESULTS"
done

# HTTP, two rows that each measure what their label says:
# - "http crop": an aligned face crop to a server started with --no-detect (decode, preprocess,
#   classify): the HTTP overhead proper;
# - "http photo": a 640x480 one-face photo to a server with detection on (the default).
"$TRAIN" synth --out "$WORK/faces" --train 0 --test 1 --size 256 >/dev/null
"$TRAIN" synth --mode photo --max-faces 1 --out "$WORK/photo" --train 0 --test 1 --seed 2 >/dev/null
http_row() {  # http_row LABEL IMAGE SERVER-ARGS...
  local label=$1 image=$2; shift 2
  "$SERVE" --model "$MODEL" --engine ort --threads "$THREADS" --addr 127.0.0.1:0 "$@" > "$WORK/serve.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 100); do grep -q "listening on" "$WORK/serve.log" && break; sleep 0.1; done
  local url; url=$(sed -n 's/^listening on //p' "$WORK/serve.log" | head -1)
  "$PY" - "$url" "$image" "$ITERS" "$label" >> "$RESULTS" <<'PY'
import http.client, json, sys, time, urllib.parse
url, image, iters, label = urllib.parse.urlparse(sys.argv[1]), open(sys.argv[2], "rb").read(), int(sys.argv[3]), sys.argv[4]
c = http.client.HTTPConnection(url.hostname, url.port)
rows = []
for i in range(iters + 10):
    t = time.perf_counter()
    c.request("POST", "/v1/predict", body=image, headers={"Content-Type": "image/png"})
    r = c.getresponse(); body = json.loads(r.read())
    rtt = (time.perf_counter() - t) * 1e3
    if i >= 10:
        tm = body["results"][0]["timing"]
        work = tm["decode_ms"] + tm.get("detect_ms", 0) + tm["inference_ms"]
        rows.append((rtt, rtt - work, tm["decode_ms"], tm.get("detect_ms", 0), tm["inference_ms"]))
p50 = lambda k: sorted(r[k] for r in rows)[len(rows) // 2]
print(json.dumps({"engine": label, "batch": 1, "p50_ms": p50(0), "rest_p50_ms": p50(1), "decode_p50_ms": p50(2),
                  "detect_p50_ms": p50(3), "inference_p50_ms": p50(4)}))
PY
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
}
http_row "http crop" "$WORK/faces/images/test/000000.png" --no-detect
http_row "http photo" "$WORK/photo/images/test/000000.png"

"$PY" - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
get = lambda e, b: next(r for r in rows if r["engine"] == e and r["batch"] == b)
print(f"{'engine':<20} {'batch':>5} {'p50 ms':>9} {'p99 ms':>9} {'img/s':>9}")
for r in rows:
    if "p99_ms" in r:
        print(f"{r['engine']:<20} {r['batch']:>5} {r['p50_ms']:>9.2f} {r['p99_ms']:>9.2f} {r['images_per_s']:>9.1f}")
py1, ort1, tr1 = get("python-onnxruntime", 1), get("ort", 1), get("tract", 1)
py8, ort8, tr8 = get("python-onnxruntime", 8), get("ort", 8), get("tract", 8)
print(f"ratio ort / python-ORT  p50 latency, batch 1: {ort1['p50_ms'] / py1['p50_ms']:.3f}   (target <= 1.05)")
print(f"ratio tract / ort       p50 latency, batch 1: {tr1['p50_ms'] / ort1['p50_ms']:.3f}   (target <= 1.5)")
print(f"ratio ort / python-ORT  throughput, batch 8:  {ort8['images_per_s'] / py8['images_per_s']:.3f}")
print(f"ratio tract / ort       throughput, batch 8:  {tr8['images_per_s'] / ort8['images_per_s']:.3f}")
for h in (r for r in rows if r["engine"].startswith("http")):
    print(f"{h['engine']:<10} (ort): p50 round trip {h['p50_ms']:.2f} ms = decode {h['decode_p50_ms']:.2f} + detect "
          f"{h['detect_p50_ms']:.2f} + inference {h['inference_p50_ms']:.2f} + the rest {h['rest_p50_ms']:.2f} ms"
          + ("   (the rest is the HTTP overhead; target <= 2 ms)" if h["engine"] == "http crop" else ""))
PY
