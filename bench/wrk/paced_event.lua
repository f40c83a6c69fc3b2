-- Open-loop-ish offered load: one event per request at a fixed total rate (per wrk thread).
-- Each send is scheduled on a global timetable (start + k / rate), so a slow response on
-- one connection does not lower the offered rate while other connections are idle.
-- occurredAt is the send time. Usage: wrk -t1 ... -s paced_event.lua URL -- RATE [path]
package.path = "./?.lua;" .. package.path
local common = require("common")

local path = "/api/ingest/events"
local interval_ms = 1.0
local pace  -- common.timetable, from init
local counter = 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  interval_ms = 1000.0 / tonumber(args[1] or "1000")
  if args[2] then path = args[2] end
  counter = math.random(0, 1000000)
  pace = common.timetable(interval_ms)
end

function delay()
  return pace()
end

function request()
  counter = counter + 1
  return wrk.format("POST", path, headers, common.event_json(counter, common.iso_ms(common.now_ms())))
end

done = common.done
