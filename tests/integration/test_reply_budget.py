"""The worker's reply budget: native stream reads that stay bounded whatever is in the stream."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from ingest_shared import keys as k
from ingest_shared.exceptions import ReplyTooLargeError
from ingest_shared.functions import WORKER_LIBRARY, load_library
from ingest_shared.redis_client import create_redis, has_reply_bound
from ingest_shared.settings import Settings
from ingest_worker.reader import PREFIX_BYTES, StreamReader, reply_budget

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis

    from ingest_shared.redis_client import RedisClient

SETTINGS = Settings(batch_size=10, max_entry_bytes=1_000, consumer_name="budget")
KEYS = SETTINGS.keys


@pytest.fixture
async def bounded(redis: Redis, redis_url: str) -> AsyncIterator[RedisClient]:
    settings = replace(SETTINGS, redis_url=redis_url)
    client = create_redis(redis_url, socket_timeout=5, max_reply_bytes=reply_budget(settings))
    await load_library(client, WORKER_LIBRARY)
    await redis.xgroup_create(KEYS.stream, SETTINGS.consumer_group, "0", mkstream=True)
    try:
        yield client
    finally:
        await client.aclose()


async def test_a_reply_over_the_budget_is_refused_and_the_client_goes_on(
    redis: Redis, redis_url: str
) -> None:
    client = create_redis(redis_url, socket_timeout=5, max_reply_bytes=10_000)
    try:
        assert has_reply_bound(client)
        assert not has_reply_bound(redis)
        await redis.set("small", b"x" * 9_000)
        await redis.set("large", b"x" * 20_000)
        assert await client.get("small") == b"x" * 9_000
        with pytest.raises(ReplyTooLargeError):
            await client.get("large")
        # The refused connection was closed, not handed back with half a reply in it.
        assert await client.get("small") == b"x" * 9_000
    finally:
        await client.aclose()


async def test_entries_over_the_limit_come_back_bounded_from_a_native_read(
    redis: Redis, bounded: RedisClient
) -> None:
    big = b"y" * 2_000  # over max_entry_bytes, but the whole reply fits the budget
    small_id = await redis.xadd(KEYS.stream, {"metric": "cpu", "value": "1"})
    big_id = await redis.xadd(KEYS.stream, {"metric": "cpu", "value": big})

    entries = await StreamReader(bounded, SETTINGS).new(block_ms=100)

    assert [entry_id for entry_id, _ in entries] == [small_id, big_id]
    assert entries[0][1] == {b"metric": b"cpu", b"value": b"1"}
    fields = entries[1][1]
    assert fields is not None
    assert fields[k.FIELD_OVERSIZED] == b"%d" % (len(b"metricvaluecpu") + len(big))
    # As the read functions bound it (lua/worker.lua): the first PREFIX_BYTES of the names
    # and values, joined by spaces.
    assert fields[k.FIELD_PREFIX] == b"metric cpu value " + big[: PREFIX_BYTES - 14]
    # Read once, natively: one delivery each.
    rows = await redis.xpending_range(KEYS.stream, SETTINGS.consumer_group, "-", "+", 10)
    assert [row["times_delivered"] for row in rows] == [1, 1]


async def test_a_batch_over_the_budget_is_read_again_through_the_function(
    redis: Redis, bounded: RedisClient
) -> None:
    reader = StreamReader(bounded, SETTINGS)
    first = await redis.xadd(KEYS.stream, {"metric": "cpu", "value": "1"})
    assert [entry_id for entry_id, _ in await reader.new(block_ms=100)] == [first]
    # Ten entries of 5 KB: 50 KB, over the budget of 10 x (1,000 + 256) bytes.
    ids = [
        await redis.xadd(KEYS.stream, {"metric": "cpu", "value": b"z" * 5_000}) for _ in range(10)
    ]

    entries = await reader.new(block_ms=100)

    assert [entry_id for entry_id, _ in entries] == ids
    for _, fields in entries:
        assert fields is not None
        assert set(fields) == {k.FIELD_OVERSIZED, k.FIELD_PREFIX}
    # Delivered by the refused read, then again by the function; the first entry untouched.
    rows = await redis.xpending_range(KEYS.stream, SETTINGS.consumer_group, "-", "+", 20)
    delivered = {row["message_id"]: row["times_delivered"] for row in rows}
    assert delivered == {first: 1} | dict.fromkeys(ids, 2)
