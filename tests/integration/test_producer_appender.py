"""The coalescing appender: concurrent requests share one FCALL and each gets its own result."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from redis.exceptions import ResponseError

from ingest_producer.appender import AppendResult, EventAppender
from ingest_producer.asgi import build_app
from ingest_shared import keys as k
from ingest_shared.functions import Appended, Duplicate, Idempotency, RateLimit, RateLimited
from ingest_shared.redis_client import call
from ingest_shared.schema import EventOut
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from tests.conftest import AppClient

SETTINGS = Settings()
KEYS = SETTINGS.keys
EVENTS = [EventOut(f"s{i}", "cpu", i / 2, "2026-03-19T12:00:00Z") for i in range(100)]


async def fcalls(redis: Redis) -> int:
    """FCALLs the server has run since the last CONFIG RESETSTAT."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_fcall", {}).get("calls", 0))


def ids_of(result: AppendResult) -> list[bytes]:
    assert isinstance(result, Appended), result
    return result.ids


async def test_concurrent_events_are_appended_in_one_call_in_order(redis: Redis) -> None:
    appender = EventAppender(redis, SETTINGS)
    await appender.load()
    await redis.config_resetstat()

    results = await asyncio.gather(*(appender.append([event]) for event in EVENTS))

    ids = [entry_id for result in results for entry_id in ids_of(result)]

    assert await fcalls(redis) == 1
    entries = await call(redis, "XRANGE", KEYS.stream, "-", "+")
    assert [entry_id for entry_id, _ in entries] == ids
    assert entries[3][1] == {
        k.FIELD_SOURCE: b"s3",
        k.FIELD_METRIC: b"cpu",
        k.FIELD_VALUE: b"1.5",
        k.FIELD_OCCURRED_AT: b"2026-03-19T12:00:00Z",
    }


async def test_batches_are_capped_at_max_batch_events(redis: Redis) -> None:
    appender = EventAppender(redis, SETTINGS, max_batch_events=10)
    await appender.load()
    await redis.config_resetstat()

    results = await asyncio.gather(*(appender.append([event]) for event in EVENTS[:25]))

    assert await fcalls(redis) == 3
    assert len({entry_id for result in results for entry_id in ids_of(result)}) == 25
    assert await redis.xlen(KEYS.stream) == 25


async def test_a_lone_event_is_sent_without_waiting_for_company(redis: Redis) -> None:
    appender = EventAppender(redis, SETTINGS)
    await appender.load()

    result = await asyncio.wait_for(appender.append([EVENTS[0]]), timeout=1)

    assert await redis.xlen(KEYS.stream) == 1
    assert ids_of(result)[0].count(b"-") == 1


async def test_a_lost_function_library_is_loaded_again(redis: Redis) -> None:
    appender = EventAppender(redis, SETTINGS)
    await appender.load()
    await call(redis, "FUNCTION", "FLUSH")

    await appender.append([EVENTS[0]])

    assert await redis.xlen(KEYS.stream) == 1


async def test_a_failed_batch_fails_every_request_in_it(redis: Redis) -> None:
    await redis.set(KEYS.stream, "not a stream")
    appender = EventAppender(redis, SETTINGS)
    await appender.load()

    results = await asyncio.gather(
        *(appender.append([event]) for event in EVENTS[:3]), return_exceptions=True
    )

    assert all(isinstance(result, ResponseError) for result in results)


async def test_each_request_of_one_call_gets_its_own_outcome(redis: Redis) -> None:
    appender = EventAppender(redis, SETTINGS)
    await appender.load()
    guard = Idempotency(KEYS.idempotency("k"), 60_000, "hash", b"echo")
    limit = RateLimit(KEYS.rate_limit("c"), limit=2, window_ms=60_000)
    await redis.config_resetstat()

    results = await asyncio.gather(
        appender.append(EVENTS[0:2]),
        appender.append(EVENTS[2:4]),  # unguarded too: both share one segment
        appender.append(EVENTS[4:5], guard),
        appender.append(EVENTS[5:6], guard),  # a concurrent repeat
        appender.append(EVENTS[6:8], rate_limit=limit),
        appender.append(EVENTS[8:9], rate_limit=limit),  # over the limit
        appender.append(EVENTS[9:10]),
    )

    assert await fcalls(redis) == 1
    plain, plain_too, guarded, repeat, limited, refused, last = results
    appended = [ids_of(result) for result in (plain, plain_too, guarded, limited, last)]
    assert [len(ids) for ids in appended] == [2, 2, 1, 2, 1]
    assert repeat == Duplicate(ids_of(guarded), b"echo")
    assert isinstance(refused, RateLimited)
    entries = await call(redis, "XRANGE", KEYS.stream, "-", "+")
    assert [entry_id for entry_id, _ in entries] == [i for ids in appended for i in ids]


async def test_an_unexpected_redis_error_is_a_json_500_without_a_trace(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    async with serve(build_app(Settings(redis_url=redis_url))) as client:
        await redis.delete(KEYS.stream)
        await redis.set(KEYS.stream, "not a stream")
        response = await client.post(
            "/api/ingest/events", json={"source": "a", "metric": "cpu", "value": 1}
        )

    assert response.status_code == 500
    assert response.json() == {"status_code": 500, "detail": "Internal server error", "errors": []}
