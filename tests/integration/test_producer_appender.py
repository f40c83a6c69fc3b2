"""The coalescing appender: concurrent requests share one FCALL and each gets its own result,
on one stream and over eight stream shards (one FCALL for all of them on a single node, one per
shard with the cluster layout)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

import pytest
from redis.exceptions import ResponseError

from ingest_producer.appender import AppendResult, EventAppender
from ingest_producer.asgi import build_app
from ingest_shared import keys as k
from ingest_shared.exceptions import OutcomeUnknownError
from ingest_shared.functions import Appended, Duplicate, Idempotency, RateLimit, RateLimited
from ingest_shared.redis_client import call
from ingest_shared.schema import EventOut
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from tests.conftest import AppClient

SETTINGS = Settings(stream_shards=1)
KEYS = SETTINGS.keys
EVENTS = [EventOut(f"s{i}", "cpu", i / 2, "2026-03-19T12:00:00Z") for i in range(100)]
SHARDED = Settings(stream_shards=8)
# The same shards with the cluster layout (every key of a call in one slot), on this one node.
CLUSTER_LAYOUT = Settings(stream_shards=8, redis_mode="cluster")
SHARDED_KEYS = SHARDED.keys
# A gateway batch: 100 devices, occurredAt omitted (stamped by the append function).
GATEWAY = [EventOut(f"dev-{n}", "cpu", float(n), "") for n in range(100)]


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
    async with serve(build_app(Settings(redis_url=redis_url, stream_shards=1))) as client:
        await redis.delete(KEYS.stream)
        await redis.set(KEYS.stream, "not a stream")
        response = await client.post(
            "/api/ingest/events", json={"source": "a", "metric": "cpu", "value": 1}
        )

    assert response.status_code == 500
    assert response.json() == {"status_code": 500, "detail": "Internal server error", "errors": []}


async def by_shard(redis: Redis) -> dict[int, list[tuple[bytes, dict[bytes, bytes]]]]:
    """Every shard's entries, by shard index."""
    return {
        shard.index: await call(redis, "XRANGE", shard.stream, "-", "+")
        for shard in SHARDED_KEYS.shards
    }


def shard_of(event: EventOut) -> int:
    return SHARDED_KEYS.shard_of_source(event.source).index


def entries_of(
    stored: dict[int, list[tuple[bytes, dict[bytes, bytes]]]],
    events: list[EventOut],
    ids: list[bytes],
) -> list[dict[bytes, bytes]]:
    """The fields each id names in the stream of its event's shard (ids repeat across
    streams)."""
    streams = {index: dict(entries) for index, entries in stored.items()}
    return [streams[shard_of(e)][i] for e, i in zip(events, ids, strict=True)]


async def test_a_flush_over_eight_shards_on_one_node_is_one_fcall(redis: Redis) -> None:
    appender = EventAppender(redis, SHARDED)
    await appender.load()
    singles = [EventOut(f"dev-{n}", "mem", float(n), "2026-03-19T12:00:00Z") for n in range(30)]
    await redis.config_resetstat()

    batch, *alone = await asyncio.gather(
        appender.append(GATEWAY), *(appender.append([event]) for event in singles)
    )

    assert await fcalls(redis) == 1
    stored = await by_shard(redis)
    assert all(stored.values())  # every shard got some
    # Each shard's stream has its own events in input order, and nothing else.
    for index, entries in stored.items():
        mine = [e for e in (*GATEWAY, *singles) if shard_of(e) == index]
        assert [(f[k.FIELD_SOURCE].decode(), f[k.FIELD_METRIC].decode()) for _, f in entries] == [
            (e.source, e.metric) for e in mine
        ]
    # Ids come back in input order: each names its own event's entry in its shard's stream.
    ids = ids_of(batch) + [entry_id for result in alone for entry_id in ids_of(result)]
    found = entries_of(stored, [*GATEWAY, *singles], ids)
    assert [(f[k.FIELD_SOURCE], f[k.FIELD_METRIC]) for f in found] == [
        (e.source.encode(), e.metric.encode()) for e in (*GATEWAY, *singles)
    ]
    # One clock for the call: every omitted occurredAt got the same stamp, on every shard.
    stamps = {f[k.FIELD_OCCURRED_AT] for f in found[: len(GATEWAY)]}
    assert len(stamps) == 1
    assert stamps != {b""}


async def test_a_guarded_request_in_a_sharded_flush_goes_whole_to_its_clients_shard(
    redis: Redis,
) -> None:
    appender = EventAppender(redis, SHARDED)
    await appender.load()
    shard = SHARDED_KEYS.shard_of_client("client-a")
    guard = Idempotency(shard.idempotency("k"), 60_000, "hash", b"echo")
    spread = [EventOut(f"dev-{n}", "mem", float(n), "2026-03-19T12:00:00Z") for n in range(16)]
    assert len({shard_of(e) for e in spread}) > 1  # several shards if it were unguarded
    await redis.config_resetstat()

    plain, guarded, repeat = await asyncio.gather(
        appender.append(GATEWAY),
        appender.append(spread, guard, shard=shard),
        appender.append(spread, guard, shard=shard),  # a concurrent repeat
    )
    later = await appender.append(spread, guard, shard=shard)  # a repeat in another flush

    assert await fcalls(redis) == 2
    assert len(ids_of(plain)) == len(GATEWAY)
    stored = await by_shard(redis)
    mine = {entry_id: f for entry_id, f in stored[shard.index] if f[k.FIELD_METRIC] == b"mem"}
    assert list(mine) == ids_of(guarded)  # whole, in order, on the client's shard
    assert [float(f[k.FIELD_VALUE]) for f in mine.values()] == [e.value for e in spread]
    assert repeat == Duplicate(ids_of(guarded), b"echo")
    assert later == Duplicate(ids_of(guarded), b"echo")
    assert sum(map(len, stored.values())) == len(GATEWAY) + len(spread)


async def test_a_segment_refused_by_its_rate_limit_leaves_the_rest_of_the_flush_appended(
    redis: Redis,
) -> None:
    appender = EventAppender(redis, SHARDED)
    await appender.load()
    shard = SHARDED_KEYS.shard_of_client("client-b")
    limit = RateLimit(shard.rate_limit("client-b"), limit=3, window_ms=60_000)
    await redis.config_resetstat()

    before, fits, refused, after = await asyncio.gather(
        appender.append(GATEWAY[:50]),
        appender.append(GATEWAY[50:53], rate_limit=limit, shard=shard),
        appender.append(GATEWAY[53:55], rate_limit=limit, shard=shard),
        appender.append(GATEWAY[55:]),
    )

    assert await fcalls(redis) == 1
    assert isinstance(refused, RateLimited)
    assert [len(ids_of(r)) for r in (before, fits, after)] == [50, 3, 45]
    stored = await by_shard(redis)
    assert sum(map(len, stored.values())) == 98
    sources = {f[k.FIELD_SOURCE] for entries in stored.values() for _, f in entries}
    assert sources.isdisjoint({b"dev-53", b"dev-54"})


async def test_a_sharded_flush_is_made_durable_by_one_wait(redis: Redis) -> None:
    appender = EventAppender(redis, dataclasses.replace(SHARDED, durability="aof"))
    await appender.load()
    await redis.config_resetstat()

    results = await asyncio.gather(appender.append(GATEWAY), appender.append(EVENTS[:20]))

    assert [len(ids_of(result)) for result in results] == [100, 20]
    stats = await redis.info("commandstats")
    assert stats["cmdstat_fcall"]["calls"] == 1
    assert stats["cmdstat_waitaof"]["calls"] == 1


async def test_a_sharded_flush_is_capped_at_max_batch_events(redis: Redis) -> None:
    appender = EventAppender(redis, SHARDED, max_batch_events=40)
    await appender.load()
    await redis.config_resetstat()

    results = await asyncio.gather(*(appender.append([event]) for event in GATEWAY))

    assert await fcalls(redis) == 3  # 40 + 40 + 20 events, each call over several shards
    assert all(len(ids_of(result)) == 1 for result in results)
    assert sum(map(len, (await by_shard(redis)).values())) == 100


async def test_the_cluster_layout_keeps_one_call_per_shard(redis: Redis) -> None:
    appender = EventAppender(redis, CLUSTER_LAYOUT)
    await appender.load()
    await redis.config_resetstat()

    result = await appender.append(GATEWAY)

    shards = {shard_of(e) for e in GATEWAY}
    assert await fcalls(redis) == len(shards)
    stored = await by_shard(redis)
    found = entries_of(stored, GATEWAY, ids_of(result))
    assert [f[k.FIELD_SOURCE] for f in found] == [e.source.encode() for e in GATEWAY]


async def test_with_the_cluster_layout_a_split_request_failing_on_one_shard_may_be_enqueued(
    redis: Redis,
) -> None:
    appender = EventAppender(redis, CLUSTER_LAYOUT)
    await appender.load()
    broken = SHARDED_KEYS.shard_of_source(GATEWAY[0].source)
    await redis.set(broken.stream, "not a stream")  # that shard's call fails

    with pytest.raises(OutcomeUnknownError, match="appended part of the request"):
        await appender.append(GATEWAY)

    others = [s for s in SHARDED_KEYS.shards if s != broken]
    appended = sum([int(await redis.xlen(s.stream)) for s in others])
    assert appended == sum(shard_of(e) != broken.index for e in GATEWAY)
