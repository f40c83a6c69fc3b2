-- POST the same body, read once from a file, on every request (binary bodies: protobuf,
-- snappy, gzip). Usage: wrk ... -s post_file.lua URL -- path file content-type [encoding]
package.path = "./?.lua;" .. package.path
local common = require("common")

local request_bytes

function init(args)
  local path, file, content_type, encoding = args[1], args[2], args[3], args[4]
  local handle = assert(io.open(file, "rb"))
  local body = handle:read("*a")
  handle:close()
  local headers = { ["Content-Type"] = content_type }
  if encoding and encoding ~= "" then headers["Content-Encoding"] = encoding end
  request_bytes = wrk.format("POST", path, headers, body)
end

function request()
  return request_bytes
end

done = common.done
