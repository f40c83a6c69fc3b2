"""A one-value query parameter given twice is a 422 naming it, on every API route; ``label``
stays repeatable. And a list over its limit says the limit."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from tests.readside import app_client

from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis
    from tests.readside import Client


@pytest.fixture
async def client(redis: Redis, redis_url: str) -> AsyncIterator[Client]:
    async with app_client(Settings(stream_shards=1), redis_url) as c:
        yield c


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/ingest/metrics/cpu/range?source=a&source=b", "source"),
        ("/api/ingest/metrics/cpu/range?from=0&to=1&from=1", "from"),
        ("/api/ingest/sources?metric=cpu&stale=true&metric=mem", "metric"),
        ("/api/ingest/events/recent?count=1&count=2", "count"),
        ("/api/ingest/dead-letters?count=1&count=2", "count"),
    ],
)
async def test_a_parameter_given_twice_is_422_naming_it(
    client: Client, path: str, name: str
) -> None:
    response = await client.get(path)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    assert "x-request-id" in response.headers
    assert response.json()["errors"] == [
        {"field": name, "message": "given more than once; it takes one value"}
    ]


async def test_label_may_be_repeated(client: Client) -> None:
    response = await client.get("/api/ingest/sources?label=site%3Da&label=rack%3D1")

    assert response.status_code == 200, response.text


async def test_more_ids_than_the_limit_says_the_limit(client: Client) -> None:
    response = await client.post("/api/ingest/dead-letters/replay", json={"ids": ["1-0"] * 10_001})

    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "ids", "message": "must be a JSON array of at most 10000 items"}
    ]
