"""Fill a stream with telemetry entries server-side, atomically, as fast as Redis can.

The entries carry the producer's fields (``source``, ``metric``, ``value`` as a decimal
string, ``occurredAt`` as RFC 3339 UTC with milliseconds). They are written by Lua scripts
inside one MULTI/EXEC, so a consumer blocked on the stream sees the whole backlog at once,
when EXEC returns: that instant starts the drain clock.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bench.config import N_METRICS, N_SOURCES

if TYPE_CHECKING:
    from redis import Redis

CHUNK = 25_000

# Event i: source = i % n_sources, metric = (i // n_sources) % n_metrics, so every
# (metric, source) pair recurs every n_metrics * n_sources events; occurredAt = base + i ms.
PREFILL_LUA = """
local stream = KEYS[1]
local first, count = tonumber(ARGV[1]), tonumber(ARGV[2])
local base_ms = tonumber(ARGV[3])
local n_metrics, n_sources = tonumber(ARGV[4]), tonumber(ARGV[5])
local floor, fmt = math.floor, string.format
local cached_second, cached_prefix = -1, ""

-- days since 1970-01-01 to (y, m, d): Howard Hinnant's civil_from_days
local function civil(days)
  local z = days + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local d = doy - floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function iso(ms)
  local s = floor(ms / 1000)
  if s ~= cached_second then
    local days = floor(s / 86400)
    local sod = s - days * 86400
    local y, m, d = civil(days)
    cached_prefix = fmt("%04d-%02d-%02dT%02d:%02d:%02d", y, m, d,
      floor(sod / 3600), floor((sod % 3600) / 60), sod % 60)
    cached_second = s
  end
  return fmt("%s.%03dZ", cached_prefix, ms - s * 1000)
end

for i = first, first + count - 1 do
  redis.call("XADD", stream, "*",
    "source", "sensor-" .. (i % n_sources),
    "metric", "metric-" .. (floor(i / n_sources) % n_metrics),
    "value", fmt("%d.%d", i % 100, i % 10),
    "occurredAt", iso(base_ms + i))
end
return count
"""


def prefill(
    redis: Redis,
    stream: str,
    count: int,
    base_ms: int,
    *,
    n_metrics: int = N_METRICS,
    n_sources: int = N_SOURCES,
) -> float:
    """Append `count` entries in one transaction; returns the monotonic time EXEC returned."""
    pipe = redis.pipeline(transaction=True)
    for first in range(0, count, CHUNK):
        size = min(CHUNK, count - first)
        pipe.eval(PREFILL_LUA, 1, stream, first, size, base_ms, n_metrics, n_sources)
    pipe.execute()
    return time.monotonic()


def now_ms() -> int:
    return time.time_ns() // 1_000_000
