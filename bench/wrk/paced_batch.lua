-- Gateway-shaped traffic at a fixed offered rate of events/s (per wrk thread), on a global
-- timetable like paced_event.lua. SIZE 100 (the default): each request is a JSON array of 100
-- events, 5 sources x 20 metrics (100 sources in all), occurredAt left out so the producer
-- stamps the whole batch with one millisecond; SIZE 1: one event object per request over the
-- same 20 metrics x 100 sources, occurredAt left out too.
-- Usage: wrk -t1 ... -s paced_batch.lua URL -- EVENTS_PER_S [SIZE] [path]
package.path = "./?.lua;" .. package.path
local common = require("common")

local METRICS, SOURCES = 20, 100
local VALUE_VARIANTS = 3
local path = "/api/ingest/events"
local interval_ms = 1.0
local pace  -- common.timetable, from init
local size = 100
local counter = 0
local bodies = {}
local headers = { ["Content-Type"] = "application/json" }

local function event(metric, source, v)
  return string.format('{"source":"sensor-%d","metric":"metric-%d","value":%d.%d}',
    source, metric, (metric * 7 + source + v) % 1000, v)
end

function init(args)
  local rate = tonumber(args[1] or "10000")
  size = tonumber(args[2] or "100")
  if args[3] then path = args[3] end
  interval_ms = 1000.0 * size / rate
  if size > 1 then
    local per_batch = math.floor(size / METRICS) -- sources per batch
    local slices = math.floor(SOURCES / per_batch)
    for v = 0, VALUE_VARIANTS - 1 do
      for slice = 0, slices - 1 do
        local events = {}
        for j = 0, size - 1 do
          local metric = math.floor(j / per_batch) % METRICS
          events[#events + 1] = event(metric, slice * per_batch + j % per_batch, v)
        end
        bodies[#bodies + 1] = "[" .. table.concat(events, ",") .. "]"
      end
    end
  else
    for v = 0, VALUE_VARIANTS - 1 do
      for n = 0, METRICS * SOURCES - 1 do
        bodies[#bodies + 1] = event(n % METRICS, math.floor(n / METRICS), v)
      end
    end
  end
  counter = math.random(0, #bodies - 1)
  pace = common.timetable(interval_ms)
end

function delay()
  return pace()
end

function request()
  counter = counter % #bodies + 1
  return wrk.format("POST", path, headers, bodies[counter])
end

-- Which non-2xx statuses came back (wrk counts them, but not by status).
local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
end

statuses = {}
function response(status)
  if status > 299 then statuses[status] = (statuses[status] or 0) + 1 end
end

function done(summary, latency, requests)
  local parts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses") or {}) do
      parts[#parts + 1] = string.format('"%d":%d', status, n)
    end
  end
  io.write("BENCH_STATUSES {" .. table.concat(parts, ",") .. "}\n")
  common.done(summary, latency, requests)
end
