"""The coalescing appender: concurrent events share one FCALL and each gets its own stream id."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from litestar.testing import AsyncTestClient
from redis.exceptions import ResponseError

from ingest_producer.appender import EventAppender
from ingest_producer.asgi import build_app
from ingest_shared import keys as k
from ingest_shared.redis_client import call
from ingest_shared.schema import EventOut
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

KEYS = Settings().keys
EVENTS = [EventOut(f"s{i}", "cpu", i / 2, "2026-03-19T12:00:00Z") for i in range(100)]


async def fcalls(redis: Redis) -> int:
    """FCALLs the server has run since the last CONFIG RESETSTAT."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_fcall", {}).get("calls", 0))


async def test_concurrent_events_are_appended_in_one_call_in_order(redis: Redis) -> None:
    appender = EventAppender(redis, KEYS)
    await appender.load()
    await redis.config_resetstat()

    ids = await asyncio.gather(*(appender.append(event) for event in EVENTS))

    assert await fcalls(redis) == 1
    entries = await call(redis, "XRANGE", KEYS.stream, "-", "+")
    assert [entry_id for entry_id, _ in entries] == ids
    assert entries[3][1] == {
        k.FIELD_SOURCE: b"s3",
        k.FIELD_METRIC: b"cpu",
        k.FIELD_VALUE: b"1.5",
        k.FIELD_OCCURRED_AT: b"2026-03-19T12:00:00Z",
    }


async def test_batches_are_capped_at_max_batch(redis: Redis) -> None:
    appender = EventAppender(redis, KEYS, max_batch=10)
    await appender.load()
    await redis.config_resetstat()

    ids = await asyncio.gather(*(appender.append(event) for event in EVENTS[:25]))

    assert await fcalls(redis) == 3
    assert len(set(ids)) == 25
    assert await redis.xlen(KEYS.stream) == 25


async def test_a_lone_event_is_sent_without_waiting_for_company(redis: Redis) -> None:
    appender = EventAppender(redis, KEYS)
    await appender.load()

    entry_id = await asyncio.wait_for(appender.append(EVENTS[0]), timeout=1)

    assert await redis.xlen(KEYS.stream) == 1
    assert entry_id.count(b"-") == 1


async def test_a_lost_function_library_is_loaded_again(redis: Redis) -> None:
    appender = EventAppender(redis, KEYS)
    await appender.load()
    await call(redis, "FUNCTION", "FLUSH")

    await appender.append(EVENTS[0])

    assert await redis.xlen(KEYS.stream) == 1


async def test_a_failed_batch_fails_every_request_in_it(redis: Redis) -> None:
    await redis.set(KEYS.stream, "not a stream")
    appender = EventAppender(redis, KEYS)
    await appender.load()

    results = await asyncio.gather(
        *(appender.append(event) for event in EVENTS[:3]), return_exceptions=True
    )

    assert all(isinstance(result, ResponseError) for result in results)


async def test_an_unexpected_redis_error_is_a_json_500_without_a_trace(
    redis: Redis, redis_url: str
) -> None:
    async with AsyncTestClient(build_app(Settings(redis_url=redis_url))) as client:
        await redis.delete(KEYS.stream)
        await redis.set(KEYS.stream, "not a stream")
        response = await client.post(
            "/api/ingest/events", json={"source": "a", "metric": "cpu", "value": 1}
        )

    assert response.status_code == 500
    assert response.json() == {"status_code": 500, "detail": "Internal server error", "errors": []}
