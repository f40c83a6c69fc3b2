"""The summary's queue additions: lag, oldest pending age, consumers."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from tests.readside import app_client

from ingest_shared.schema import now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis
    from tests.readside import Client

# One stream: these tests write to and read from it directly.
SETTINGS = Settings(stream_shards=1)
STREAM, GROUP = SETTINGS.stream_key, SETTINGS.consumer_group


@pytest.fixture
async def client(redis: Redis, redis_url: str) -> AsyncIterator[Client]:
    async with app_client(SETTINGS, redis_url) as c:
        yield c


async def queue(client: Client) -> Any:
    response = await client.get("/api/ingest/summary")
    assert response.status_code == 200, response.text
    return response.json()["queue"]


async def test_lag_age_of_the_oldest_pending_entry_and_consumers(
    client: Client, redis: Redis
) -> None:
    old = now_ms() - 5_000
    await redis.xadd(STREAM, {"metric": "cpu"}, id=f"{old}-0")
    for _ in range(3):
        await redis.xadd(STREAM, {"metric": "cpu"})
    await redis.xreadgroup(GROUP, "reader", {STREAM: ">"}, count=2)
    await asyncio.sleep(0.05)

    found = await queue(client)

    assert found["lag"] == 2
    assert found["pending"] == 2
    assert 5_000 <= found["oldestPendingAgeMs"] < 60_000
    [consumer] = found["consumers"]
    assert (consumer["name"], consumer["pending"]) == ("reader", 2)
    assert consumer["idleMs"] >= 50


async def test_lag_is_null_when_redis_cannot_tell(client: Client, redis: Redis) -> None:
    ids = [await redis.xadd(STREAM, {"metric": "cpu"}) for _ in range(3)]
    await redis.xreadgroup(GROUP, "reader", {STREAM: ">"}, count=1)
    await redis.xdel(STREAM, ids[2])  # a deletion after the group's position

    found = await queue(client)

    assert found["lag"] is None
    assert found["oldestPendingAgeMs"] is not None


async def test_nothing_pending_has_no_age(client: Client, redis: Redis) -> None:
    await redis.xadd(STREAM, {"metric": "cpu"})

    found = await queue(client)

    assert (found["lag"], found["pending"], found["oldestPendingAgeMs"]) == (1, 0, None)
    assert found["consumers"] == []
