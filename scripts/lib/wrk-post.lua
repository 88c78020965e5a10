-- wrk script shared by scripts/load-test.sh and scripts/hostile-load.sh: every request POSTs the
-- file named by $BODY with the content type $CTYPE (default application/octet-stream); at the
-- end it prints the status counts over all threads, p50/p99 latency, throughput, the request
-- count and the socket errors, one "KEY value" line each.
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("CTYPE") or "application/octet-stream"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do total[k] = (total[k] or 0) + v end
  end
  io.write("STATUS")
  for k, v in pairs(total) do io.write(string.format(" %d:%d", k, v)) end
  io.write(string.format("\nP50_MS %.2f\nP99_MS %.2f\nRPS %.3f\nREQUESTS %d\nERRORS %d\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests / (summary.duration / 1e6), summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
