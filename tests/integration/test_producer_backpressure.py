"""Backpressure: above INGEST_MAX_BACKLOG writes get 503 + Retry-After and nothing is enqueued."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING

import pytest
from litestar import Litestar

from ingest_producer.appender import EventAppender
from ingest_producer.asgi import build_app
from ingest_producer.backlog import BacklogMonitor
from ingest_producer.cardinality import SeriesRegistry
from ingest_producer.errors import exception_handlers
from ingest_producer.ingest import enqueue_route
from ingest_shared.redis_client import call
from ingest_shared.schema import TimeWindow
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    import httpx
    from redis.asyncio import Redis
    from tests.conftest import AppClient

URL = "/api/ingest/events"
MAX_BACKLOG = 5
SETTINGS = Settings(stream_shards=1, max_backlog=MAX_BACKLOG)
STREAM, GROUP = SETTINGS.stream_key, SETTINGS.consumer_group
EVENT = {"source": "sensor-a", "metric": "cpu", "value": 1.0}
WAIT_S = 5.0


async def fill(redis: Redis, entries: int) -> None:
    """A group that has read nothing yet, and ``entries`` waiting for it."""
    await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    for i in range(entries):
        await redis.xadd(STREAM, {"source": "s", "metric": "cpu", "value": str(i)})


async def drain(redis: Redis) -> None:
    """What a worker does: read everything and acknowledge it."""
    reply = await call(redis, "XREADGROUP", "GROUP", GROUP, "w1", "STREAMS", STREAM, ">")
    await call(redis, "XACK", STREAM, GROUP, *[entry_id for entry_id, _ in reply[0][1]])


async def assert_refused(response: httpx.Response, redis: Redis, length: int) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert "INGEST_MAX_BACKLOG" in response.json()["detail"]
    assert await redis.xlen(STREAM) == length


async def test_a_refreshed_monitor_over_the_limit_refuses_writes_without_a_redis_call(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    settings = dataclasses.replace(SETTINGS, redis_url=redis_url)
    backlog = BacklogMonitor(redis, STREAM, GROUP, MAX_BACKLOG)
    window = TimeWindow(settings.max_clock_skew_ms, settings.retention_ms)
    registry = SeriesRegistry(redis, settings)
    route = enqueue_route(settings, window, EventAppender(redis, settings), backlog, registry)
    app = Litestar([route], exception_handlers=exception_handlers())
    await fill(redis, MAX_BACKLOG + 1)
    await backlog.refresh()

    async with serve(app) as client:
        await redis.config_resetstat()
        single = await client.post(URL, json=EVENT)
        batch = await client.post(URL, json=[EVENT] * 3)
        stats = await redis.info("commandstats")
        await assert_refused(single, redis, MAX_BACKLOG + 1)
        await assert_refused(batch, redis, MAX_BACKLOG + 1)

        await drain(redis)
        await backlog.refresh()
        after_drain = await client.post(URL, json=EVENT)

    assert set(stats) == {"cmdstat_config|resetstat"}  # the route asked Redis nothing
    assert after_drain.status_code == 200


@pytest.mark.parametrize("length", [MAX_BACKLOG + 1, MAX_BACKLOG * 3])
async def test_the_app_refuses_writes_while_the_workers_are_behind(
    redis: Redis, redis_url: str, serve: AppClient, length: int
) -> None:
    await fill(redis, length)
    app = build_app(dataclasses.replace(SETTINGS, redis_url=redis_url))

    async with serve(app) as client:

        async def overloaded() -> bool:
            return bool((await client.get("/ready")).json().get("overloaded"))

        deadline = time.monotonic() + WAIT_S
        while not await overloaded():  # the monitor refreshes every 250 ms
            assert time.monotonic() < deadline, "the backlog monitor never saw the backlog"
            await asyncio.sleep(0.05)
        single = await client.post(URL, json=EVENT)
        ndjson = await client.post(
            URL,
            content=b'{"source":"a","metric":"m","value":1}\n',
            headers={"content-type": "application/x-ndjson"},
        )
        await assert_refused(single, redis, length)
        await assert_refused(ndjson, redis, length)

        await drain(redis)
        while await overloaded():
            assert time.monotonic() < deadline + WAIT_S, "the backlog monitor never caught up"
            await asyncio.sleep(0.05)
        accepted = await client.post(URL, json=EVENT)

    assert accepted.status_code == 200
    assert await redis.xlen(STREAM) == length + 1
