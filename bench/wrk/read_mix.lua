-- GET the given read routes in turn: the dashboard's heaviest queries, looped by readers.
-- Usage: wrk ... -s read_mix.lua URL -- PATH [PATH ...]
package.path = "./?.lua;" .. package.path
local common = require("common")

local requests = {}
local next_request = 0

function init(args)
  local headers = { Accept = "application/json" }
  for i, path in ipairs(args) do
    requests[i] = wrk.format("GET", path, headers)
  end
  next_request = math.random(0, #requests - 1)
end

function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end

done = common.done
