-- Shared by the wrk scripts (wrk runs with this folder as its working directory).
-- done() prints one machine-readable line that bench/loadgen.py parses.
local M = {}

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]])
local CLOCK_REALTIME = 0
local timespec = ffi.new("bench_timespec")

-- Wall clock in milliseconds (float), for occurredAt and for pacing.
function M.now_ms()
  ffi.C.clock_gettime(CLOCK_REALTIME, timespec)
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

-- The delay() of a paced script: sends on a global timetable (start + k * interval_ms), so a
-- slow response on one connection does not lower the offered rate while others are idle.
function M.timetable(interval_ms)
  local next_due = M.now_ms()
  return function()
    next_due = next_due + interval_ms
    local wait = next_due - M.now_ms()
    if wait < 0 then return 0 end
    return math.floor(wait)
  end
end

-- RFC 3339 UTC with milliseconds, e.g. 2026-03-19T12:00:00.123Z.
function M.iso_ms(ms)
  local secs = math.floor(ms / 1000)
  return os.date("!%Y-%m-%dT%H:%M:%S", secs) .. string.format(".%03dZ", math.floor(ms - secs * 1000))
end

-- One event body; n picks source (200 values), metric (50 values) and value.
function M.event_json(n, occurred_at)
  return string.format(
    '{"source":"sensor-%d","metric":"metric-%d","value":%d.%d,"occurredAt":"%s"}',
    n % 200, math.floor(n / 200) % 50, n % 1000, n % 10, occurred_at
  )
end

function M.done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,'
      .. '"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max
  ))
end

return M
