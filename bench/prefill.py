"""Fill a stream with telemetry entries server-side, atomically, as fast as Redis can.

The entries carry the producer's fields (``source``, ``metric``, ``value`` as a decimal
string, ``occurredAt`` as RFC 3339 UTC, formatted as the append function does). They are
written by Lua scripts inside one MULTI/EXEC, so a consumer blocked on the stream sees the
whole backlog at once, when EXEC returns: that instant starts the drain clock.

Two layouts (:data:`DISTINCT`, :data:`GATEWAY`): every event in its own millisecond, or what a
gateway's batches of 100 look like once the producer has stamped them (5 sources x 20
metrics per batch, one millisecond per batch, so 5 events per metric per millisecond).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.config import GATEWAY_BATCH, GATEWAY_METRICS, GATEWAY_SOURCES, N_METRICS, N_SOURCES
from ingest_shared.functions import PRODUCER_LIBRARY

if TYPE_CHECKING:
    from redis import Redis


@dataclass(frozen=True, slots=True)
class Layout:
    """Which (metric, source, occurredAt) event number i gets."""

    name: str
    n_metrics: int
    n_sources: int
    gateway: bool  # False: one ms per event; True: one ms per batch of GATEWAY_BATCH
    # Gateway only: the 3rd and 4th batch of every 4 swap milliseconds, so a quarter of the
    # batches reach the stream 1 ms "late", as concurrent requests do (measured with one
    # producer at 40k events/s: ~21% of per-metric steps went back in time).
    reordered: bool = False

    def event(self, i: int, base_ms: int) -> tuple[str, str, int]:
        """(metric, source, timestamp ms) of event ``i``, as the Lua script writes it."""
        if not self.gateway:
            metric = (i // self.n_sources) % self.n_metrics
            return f"metric-{metric}", f"sensor-{i % self.n_sources}", base_ms + i
        batch, j = divmod(i, GATEWAY_BATCH)
        per_batch = GATEWAY_BATCH // self.n_metrics  # sources per batch
        source = (batch % (self.n_sources // per_batch)) * per_batch + j % per_batch
        shift = {2: 1, 3: -1}.get(batch % 4, 0) if self.reordered else 0
        return f"metric-{j // per_batch}", f"sensor-{source}", base_ms + batch + shift

    def milliseconds(self, events: int) -> int:
        """How many milliseconds of timeline ``events`` events use."""
        return events if not self.gateway else events // GATEWAY_BATCH + 2


DISTINCT = Layout("distinct timestamps", N_METRICS, N_SOURCES, gateway=False)
GATEWAY = Layout("gateway batches", GATEWAY_METRICS, GATEWAY_SOURCES, gateway=True)
GATEWAY_REORDERED = Layout(
    "gateway batches, 1 in 4 one ms late", GATEWAY_METRICS, GATEWAY_SOURCES, gateway=True,
    reordered=True,
)  # fmt: skip

CHUNK = 25_000

# Event i (distinct): source = i % n_sources, metric = (i // n_sources) % n_metrics, so every
# (metric, source) pair recurs every n_metrics * n_sources events; occurredAt = base + i ms.
# Gateway (ARGV[6] = batch size): see Layout.event.
# rfc3339: the append function's own formatting (ingest_shared/lua/producer.lua).
PREFILL_LUA = (
    PRODUCER_LIBRARY.local_function("rfc3339")
    + """
local stream = KEYS[1]
local first, count = tonumber(ARGV[1]), tonumber(ARGV[2])
local base_ms = tonumber(ARGV[3])
local n_metrics, n_sources = tonumber(ARGV[4]), tonumber(ARGV[5])
local batch_size = tonumber(ARGV[6])
local reordered = ARGV[7] == "1"
local per_batch = batch_size > 0 and math.floor(batch_size / n_metrics) or 1
local slices = math.floor(n_sources / per_batch)
local floor, fmt = math.floor, string.format

for i = first, first + count - 1 do
  local source, metric, ms
  if batch_size > 0 then
    local batch = floor(i / batch_size)
    local j = i - batch * batch_size
    source = (batch % slices) * per_batch + j % per_batch
    metric = floor(j / per_batch)
    ms = base_ms + batch
    if reordered then
      local slot = batch % 4
      if slot == 2 then ms = ms + 1 elseif slot == 3 then ms = ms - 1 end
    end
  else
    source, metric, ms = i % n_sources, floor(i / n_sources) % n_metrics, base_ms + i
  end
  redis.call("XADD", stream, "*",
    "source", "sensor-" .. source,
    "metric", "metric-" .. metric,
    "value", fmt("%d.%d", i % 100, i % 10),
    "occurredAt", rfc3339(ms))
end
return count
"""
)


def prefill(
    redis: Redis, stream: str, count: int, base_ms: int, layout: Layout = DISTINCT
) -> float:
    """Append `count` entries in one transaction; returns the monotonic time EXEC returned."""
    batch = GATEWAY_BATCH if layout.gateway else 0
    pipe = redis.pipeline(transaction=True)
    # Chunks start on a batch boundary (CHUNK is a multiple of GATEWAY_BATCH).
    for first in range(0, count, CHUNK):
        size = min(CHUNK, count - first)
        pipe.eval(
            PREFILL_LUA, 1, stream, first, size, base_ms, layout.n_metrics, layout.n_sources,
            batch, int(layout.reordered),
        )  # fmt: skip
    pipe.execute()
    return time.monotonic()


def now_ms() -> int:
    return time.time_ns() // 1_000_000
