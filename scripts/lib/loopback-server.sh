# Sourced by scripts/load-test.sh and scripts/hostile-load.sh (which set NAME, TRAIN, SERVE and
# PHOTO first): checks for wrk and the test photo, makes WORK (removed at exit, with the server
# killed if still running), sets MODEL (scripts/lib/bench-model.sh) and defines
#   start_server LOG_LEVEL RSS_INTERVAL_S
# which starts dmue-serve at its defaults on a free loopback port (PID, URL) and samples its
# RSS every RSS_INTERVAL_S seconds into $WORK/rss.txt ("unix-seconds KiB" lines).
command -v wrk >/dev/null || { echo "$NAME: needs wrk (Debian: apt-get install wrk)" >&2; exit 1; }
[ -f "$PHOTO" ] || { echo "$NAME: $PHOTO missing: run scripts/fetch-test-data.sh" >&2; exit 1; }
export DMUE_NO_PROGRESS=1
WORK=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
source scripts/lib/bench-model.sh
echo "model: $MODEL, photo: $PHOTO, machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

start_server() {
  DMUE_LOG=$1 "$SERVE" --model "$MODEL" --addr 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.log" &
  PID=$!
  for _ in $(seq 600); do grep -q "listening on" "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
  URL=$(sed -n 's/^listening on //p' "$WORK/serve.out")
  [ -n "$URL" ] || { cat "$WORK/serve.log" >&2; exit 1; }
  local interval=$2
  ( while kill -0 "$PID" 2>/dev/null; do
      echo "$(date +%s.%N) $(awk '/VmRSS/ {print $2}' /proc/$PID/status 2>/dev/null)"; sleep "$interval"
    done ) >"$WORK/rss.txt" &
}
