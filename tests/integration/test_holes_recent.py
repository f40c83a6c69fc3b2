"""``/events/recent`` shows entries as the worker takes them: checked by its rules, bounded by
INGEST_MAX_ENTRY_BYTES."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from tests.readside import BASE_MS, app_client

from ingest_shared.redis_client import call
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings
from ingest_shared.streams import OVERSIZED_PREFIX_BYTES

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis
    from tests.readside import Client

SETTINGS = Settings(stream_shards=1)
STREAM = SETTINGS.keys.stream
RECENT = "/api/ingest/events/recent"


@pytest.fixture
async def client(redis: Redis, redis_url: str) -> AsyncIterator[Client]:
    async with app_client(SETTINGS, redis_url) as c:
        yield c


def entry(value: str, at: int = BASE_MS) -> dict[str, str]:
    return {"source": "sensor-a", "metric": "cpu", "value": value, "occurredAt": format_ms(at)}


async def test_values_the_worker_rejects_are_shown_as_stored_with_the_reason(
    client: Client, redis: Redis
) -> None:
    for value in ("7", "  7  ", "1_000", "-0"):
        await redis.xadd(STREAM, entry(value))  # type: ignore[arg-type]
    await redis.xadd(STREAM, entry("1", at=now_ms() + 3_600_000))  # type: ignore[arg-type]

    response = await client.get(RECENT)

    assert response.status_code == 200
    future, zero, underscore, spaced, seven = response.json()
    assert (seven["value"]["value"], "reason" not in seven) == (7.0, True)
    assert (zero["value"]["value"], "reason" not in zero) == (0.0, True)
    for shown, stored in ((spaced, "  7  "), (underscore, "1_000")):
        assert shown["value"]["value"] == stored
        assert shown["reason"] == "value: must be a finite number, got a string"
    assert future["reason"].startswith("occurredAt: is more than ")


async def test_an_entry_over_the_entry_limit_is_shown_bounded(client: Client, redis: Redis) -> None:
    limit = SETTINGS.max_entry_bytes
    huge = entry("1") | {"padding": "x" * (4 * 1024 * 1024)}
    for _ in range(20):
        await redis.xadd(STREAM, huge)  # type: ignore[arg-type]
    await redis.xadd(STREAM, entry("x" * (limit - 100)))  # type: ignore[arg-type]

    response = await client.get(RECENT, params={"count": 21})
    # What the route reads: bounded in Redis, so the 80 MB never leave it.
    reply = await call(
        redis, "FCALL", "ingest_recent", 1, STREAM, 21, limit, OVERSIZED_PREFIX_BYTES
    )

    assert response.status_code == 200
    assert len(response.content) < 21 * (limit + 2_048)
    assert len(reply) == 21
    assert sum(len(part) for _, fields in reply for part in fields) < 21 * (limit + 2_048)
    at_limit, *oversized = response.json()
    assert at_limit["reason"] == "value: must be a finite number, got a string"
    assert len(oversized) == 20
    size = sum(map(len, huge)) + sum(map(len, huge.values()))
    for shown in oversized:
        assert set(shown["value"]) == {"__oversized__", "__prefix__"}
        assert shown["value"]["__oversized__"] == str(size)
        assert shown["value"]["__prefix__"].startswith("source sensor-a metric cpu value 1")
        assert len(shown["value"]["__prefix__"]) < 1_100
        assert shown["reason"].startswith(
            f"entry of {size} bytes is larger than INGEST_MAX_ENTRY_BYTES ({limit})"
        )
