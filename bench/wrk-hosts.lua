-- wrk script of bench/run.js: every request is GET / with the next Host header of a list (one
-- hostname a line, the file named after `--` on wrk's command line), cycling, so the proxy under
-- test resolves a different tenant on each request. The requests are formatted once in init():
-- request() only hands the next one out, keeping the load generator's CPU per request at what
-- wrk costs with a fixed request. done() prints one line, `BENCH_JSON {…}`, with the counts and
-- latency percentiles (microseconds) that bench/run.js parses.

local requests = {}
local n = 0
local i = 0

function init (args)
  local file = args[1]
  if file == nil then error('usage: wrk … -s bench/wrk-hosts.lua <url> -- <hosts file>') end
  for host in io.lines(file) do
    if host ~= '' then
      n = n + 1
      requests[n] = wrk.format('GET', '/', { Host = host })
    end
  end
  if n == 0 then error('no hosts in ' .. file) end
end

function request ()
  i = i % n + 1
  return requests[i]
end

function done (summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"durationUs":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latencyUs":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
