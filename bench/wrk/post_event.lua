-- POST one JSON telemetry event per request; source, metric and value vary.
-- Usage: wrk ... -s post_event.lua URL -- [path]
package.path = "./?.lua;" .. package.path
local common = require("common")

local path = "/api/ingest/events"
local counter = 0
local occurred_at = common.iso_ms(common.now_ms() - 1000)
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  if args[1] then path = args[1] end
  counter = math.random(0, 1000000)
end

function request()
  counter = counter + 1
  return wrk.format("POST", path, headers, common.event_json(counter, occurred_at))
end

done = common.done
