"""``GET /api/ingest/summary`` and ``GET /api/ingest/events/recent``: read-only queries.

No ``from __future__ import annotations`` here: Litestar reads handler annotations at runtime.
"""

import math
from typing import Annotated

from litestar import get
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ingest_producer.auth import ACCESS_OPT, Access
from ingest_producer.errors import error_responses
from ingest_producer.models import MetricSummary, Point, QueueSummary, RecentEntry, Summary
from ingest_producer.openapi import ParameterOperation
from ingest_shared import keys as k
from ingest_shared.keys import Keys
from ingest_shared.redis_client import call

# Replies that mean "nothing there yet" rather than a failure.
_NO_GROUP = "NOGROUP"
_NO_SERIES = "does not exist"
_NO_KEY = "no such key"


def query_routes(redis: Redis, keys: Keys, group: str) -> list[HTTPRouteHandler]:
    """The read routes, bound to their collaborators."""

    @get(
        "/api/ingest/summary",
        responses=error_responses(401, 403, 500, 503),
        opt={ACCESS_OPT: Access.READ},
        tags=["queries"],
        summary="Queue health and the latest raw and rollup value of every metric",
    )
    async def summary() -> Summary:
        return await read_summary(redis, keys, group)

    @get(
        "/api/ingest/events/recent",
        responses=error_responses(401, 403, 422, 500, 503),
        opt={ACCESS_OPT: Access.READ},
        operation_class=ParameterOperation,
        tags=["queries"],
        summary="The newest stream entries, newest first",
    )
    async def recent_events(
        count: Annotated[int, Parameter(ge=1, le=1000, description="How many entries")] = 20,
    ) -> list[RecentEntry]:
        return await read_recent(redis, keys, count)

    return [summary, recent_events]


async def read_summary(redis: Redis, keys: Keys, group: str) -> Summary:
    """Two round trips whatever the number of metrics: queue counters, then every TS.GET."""
    pipe = redis.pipeline(transaction=False)
    pipe.xlen(keys.stream)
    pipe.xpending(keys.stream, group)
    pipe.xlen(keys.dead_letter)
    pipe.smembers(keys.metrics)
    pipe.execute_command("XINFO", "STREAM", keys.stream)
    total, pending, dead_lettered, members, info = await pipe.execute(raise_on_error=False)
    queue = QueueSummary(
        total=_count(total),
        pending=_pending_count(pending),
        dead_lettered=_count(dead_lettered),
        added=_entries_added(info),
    )
    if isinstance(members, Exception):
        raise members
    metrics = sorted(m.decode(errors="replace") for m in members)
    if not metrics:
        return Summary(queue, [])
    pipe = redis.pipeline(transaction=False)
    for metric in metrics:
        pipe.execute_command("TS.GET", keys.raw(metric))
        pipe.execute_command("TS.GET", keys.rollup(metric))
    latest = await pipe.execute(raise_on_error=False)
    return Summary(
        queue,
        [
            MetricSummary(metric, _point(latest[2 * i]), _point(latest[2 * i + 1]))
            for i, metric in enumerate(metrics)
        ],
    )


async def read_recent(redis: Redis, keys: Keys, count: int) -> list[RecentEntry]:
    """The newest ``count`` entries, whatever their writer put in them."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await call(
        redis, "XREVRANGE", keys.stream, "+", "-", "COUNT", count
    )
    return [RecentEntry(entry_id.decode(), entry_value(fields)) for entry_id, fields in entries]


def entry_value(fields: dict[bytes, bytes]) -> dict[str, str | float]:
    """Fields as text (invalid UTF-8 replaced), with a finite numeric ``value`` as a number."""
    value: dict[str, str | float] = {
        name.decode(errors="replace"): text.decode(errors="replace")
        for name, text in fields.items()
    }
    raw = fields.get(k.FIELD_VALUE)
    if raw is not None:
        try:
            number = float(raw)
        except ValueError:
            return value
        if math.isfinite(number):
            value[k.FIELD_VALUE.decode()] = number
    return value


def _count(reply: object) -> int:
    if isinstance(reply, Exception):
        raise reply
    if not isinstance(reply, int):
        msg = f"unexpected reply {reply!r}, expected an integer"
        raise TypeError(msg)
    return reply


def _entries_added(reply: object) -> int:
    """XINFO STREAM's entries-added; a missing stream has had none."""
    if isinstance(reply, ResponseError) and _NO_KEY in str(reply):
        return 0
    if isinstance(reply, Exception):
        raise reply
    if not isinstance(reply, dict):  # redis-py parses XINFO STREAM into a dict
        msg = f"unexpected XINFO STREAM reply {reply!r}"
        raise TypeError(msg)
    return int(reply.get("entries-added") or reply.get(b"entries-added") or 0)


def _pending_count(reply: object) -> int:
    """XPENDING's summary count; a missing stream or group has nothing pending."""
    if isinstance(reply, ResponseError) and str(reply).startswith(_NO_GROUP):
        return 0
    if isinstance(reply, Exception):
        raise reply
    if not isinstance(reply, dict):  # redis-py parses the summary form into a dict
        msg = f"unexpected XPENDING reply {reply!r}"
        raise TypeError(msg)
    return int(reply["pending"])


def _point(reply: object) -> Point | None:
    """A TS.GET reply: [timestamp, value], [] for an empty series; errors for a missing one."""
    if isinstance(reply, ResponseError) and _NO_SERIES in str(reply):
        return None
    if isinstance(reply, Exception):
        raise reply
    if not isinstance(reply, list | tuple) or len(reply) != 2:
        return None
    timestamp, value = reply
    return Point(int(timestamp), float(value))
