"""The server-side append function: order, idempotency and rate limit, atomically."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from ingest_shared.functions import (
    Appended,
    Duplicate,
    Idempotency,
    RateLimit,
    RateLimited,
    append_events,
    load_functions,
)
from ingest_shared.redis_client import call
from ingest_shared.schema import EventOut
from ingest_shared.settings import load_settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

KEYS = load_settings({}).keys
EVENTS = [EventOut(f"s{i}", "cpu", i / 4, "2026-03-19T12:00:00Z") for i in range(50)]


@pytest.fixture
async def loaded(redis: Redis) -> Redis:
    await load_functions(redis)
    return redis


async def test_batch_is_appended_in_order_with_the_tutorial_fields(loaded: Redis) -> None:
    reply = await append_events(loaded, KEYS, EVENTS)
    assert isinstance(reply, Appended)
    entries = await loaded.xrange(KEYS.stream)
    assert entries is not None
    assert [entry_id for entry_id, _ in entries] == reply.ids
    assert entries[7][1] == {
        b"source": b"s7",
        b"metric": b"cpu",
        b"value": b"1.75",
        b"occurredAt": b"2026-03-19T12:00:00Z",
    }


async def test_loading_twice_is_harmless(loaded: Redis) -> None:
    await load_functions(loaded)
    assert isinstance(await append_events(loaded, KEYS, EVENTS[:1]), Appended)


async def test_repeat_with_the_same_idempotency_key_enqueues_nothing(loaded: Redis) -> None:
    guard = Idempotency(KEYS.idempotency("k1"), 60_000, "hash-a", b'{"count":2}')
    first = await append_events(loaded, KEYS, EVENTS[:2], guard)
    again = await append_events(loaded, KEYS, EVENTS[:2], guard)
    assert isinstance(first, Appended)
    assert again == Duplicate(body_hash=b"hash-a", ids=first.ids, echo=b'{"count":2}')
    assert await loaded.xlen(KEYS.stream) == 2
    assert 0 < await loaded.pttl(KEYS.idempotency("k1")) <= 60_000


async def test_concurrent_repeats_enqueue_once(loaded: Redis) -> None:
    guard = Idempotency(KEYS.idempotency("k2"), 60_000, "h", b"{}")
    replies = await asyncio.gather(
        *(append_events(loaded, KEYS, EVENTS[:3], guard) for _ in range(20))
    )
    assert sum(isinstance(reply, Appended) for reply in replies) == 1
    assert await loaded.xlen(KEYS.stream) == 3


async def test_rate_limit_refuses_past_the_limit_and_enqueues_nothing(loaded: Redis) -> None:
    limit = RateLimit(KEYS.rate_limit("client-1"), limit=5, window_ms=60_000)
    replies = [await append_events(loaded, KEYS, EVENTS[:2], rate_limit=limit) for _ in range(4)]
    assert [type(reply) for reply in replies] == [Appended, Appended, RateLimited, RateLimited]
    refused = replies[2]
    assert isinstance(refused, RateLimited)
    assert 0 < refused.retry_after_ms <= 60_000
    assert await loaded.xlen(KEYS.stream) == 4


async def test_rate_limit_is_per_client(loaded: Redis) -> None:
    for client in ("a", "b"):
        limit = RateLimit(KEYS.rate_limit(client), limit=1, window_ms=60_000)
        assert isinstance(await append_events(loaded, KEYS, EVENTS[:1], rate_limit=limit), Appended)


async def test_a_batch_larger_than_the_limit_passes_in_an_empty_window(loaded: Redis) -> None:
    limit = RateLimit(KEYS.rate_limit("big"), limit=10, window_ms=60_000)
    assert isinstance(await append_events(loaded, KEYS, EVENTS, rate_limit=limit), Appended)
    assert isinstance(await append_events(loaded, KEYS, EVENTS[:1], rate_limit=limit), RateLimited)


async def _read(redis: Redis, consumer: str, count: int) -> list[bytes]:
    reply = await call(
        redis, "XREADGROUP", "GROUP", "g", consumer, "COUNT", count, "STREAMS", KEYS.stream, ">"
    )
    return [entry_id for entry_id, _ in reply[0][1]] if reply else []


async def test_trim_never_removes_pending_or_undelivered_entries(loaded: Redis) -> None:
    from ingest_shared.functions import trim_stream

    reply = await append_events(loaded, KEYS, EVENTS)  # 50 entries
    assert isinstance(reply, Appended)
    await loaded.xgroup_create(KEYS.stream, "g", id="0")
    await loaded.xgroup_create(KEYS.stream, "slow", id="0")
    read = await _read(loaded, "c1", 30)  # group g: 30 delivered, 20 undelivered
    await loaded.xack(KEYS.stream, "g", *read[:10])  # ... of which 20 still pending
    await loaded.xreadgroup("slow", "c2", {KEYS.stream: ">"}, count=25)
    await loaded.xack(KEYS.stream, "slow", *reply.ids[:25])  # slow: 25 done, none pending

    removed = await trim_stream(loaded, KEYS, keep=5)

    remaining = [entry_id for entry_id, _ in await loaded.xrange(KEYS.stream) or []]
    assert removed == 10
    assert remaining == reply.ids[10:]  # g's oldest pending entry is the 11th


async def test_trim_keeps_the_newest_entries_and_waits_for_a_group(loaded: Redis) -> None:
    from ingest_shared.functions import trim_stream

    reply = await append_events(loaded, KEYS, EVENTS)
    assert isinstance(reply, Appended)
    assert await trim_stream(loaded, KEYS, keep=5) == 0  # no group yet: all still needed
    await loaded.xgroup_create(KEYS.stream, "g", id="$")  # everything already consumed
    assert await trim_stream(loaded, KEYS, keep=5) == 45
    assert await loaded.xlen(KEYS.stream) == 5
