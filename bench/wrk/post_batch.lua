-- POST a JSON array of N events per request (bodies are built once per thread).
-- Usage: wrk ... -s post_batch.lua URL -- N [path]
package.path = "./?.lua;" .. package.path
local common = require("common")

local VARIANTS = 8
local requests = {}
local next_request = 0

function init(args)
  local size = tonumber(args[1] or "100")
  local path = args[2] or "/api/ingest/events"
  local occurred_at = common.iso_ms(common.now_ms() - 1000)
  local headers = { ["Content-Type"] = "application/json" }
  local n = math.random(0, 1000000)
  for v = 1, VARIANTS do
    local events = {}
    for i = 1, size do
      n = n + 1
      events[i] = common.event_json(n, occurred_at)
    end
    requests[v] = wrk.format("POST", path, headers, "[" .. table.concat(events, ",") .. "]")
  end
end

function request()
  next_request = next_request % VARIANTS + 1
  return requests[next_request]
end

done = common.done
