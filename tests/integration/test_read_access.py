"""GET /api/ingest/access, and API keys on every read-side route."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import pytest
from tests.readside import app_client

from ingest_producer.openapi import ecma_pattern
from ingest_shared.schema import SOURCE_PATTERN
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx
    from redis.asyncio import Redis
    from tests.readside import Client

WRITE_KEY = "write-key-0123456789abcdef"
READ_KEY = "read-key-0123456789abcdef"
SETTINGS = Settings(
    stream_shards=1, write_keys=frozenset({WRITE_KEY}), read_keys=frozenset({READ_KEY})
)


class Route(NamedTuple):
    method: str
    path: str
    body: object
    access: str


ROUTES = [
    Route("GET", "/api/ingest/metrics", None, "read"),
    Route("GET", "/api/ingest/metrics/cpu/range", None, "read"),
    Route("GET", "/api/ingest/charts", None, "read"),
    Route("GET", "/api/ingest/sources", None, "read"),
    Route("GET", "/api/ingest/dead-letters", None, "read"),
    Route("POST", "/api/ingest/dead-letters/replay", {"all": True}, "write"),
    Route("DELETE", "/api/ingest/dead-letters/1-0", None, "write"),
    Route("DELETE", "/api/ingest/dead-letters?olderThanMs=1000", None, "write"),
]


@pytest.fixture
async def client(redis: Redis, redis_url: str) -> AsyncIterator[Client]:
    async with app_client(SETTINGS, redis_url) as c:
        yield c


async def send(client: Client, route: Route, headers: dict[str, str]) -> httpx.Response:
    if route.method == "POST":
        return await client.post(route.path, json=route.body, headers=headers)
    return await client.request(route.method, route.path, headers=headers)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_every_read_side_route_checks_the_key(client: Client, route: Route) -> None:
    none = await send(client, route, {})
    read = await send(client, route, {"Authorization": f"Bearer {READ_KEY}"})
    write = await send(client, route, {"X-API-Key": WRITE_KEY})

    assert none.status_code == 401
    assert read.status_code == (200 if route.access == "read" else 403)
    # The write key may do everything (deleting an absent dead letter is a 404).
    assert write.status_code in (200, 404)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, "none"),
        ({"Authorization": "Bearer nope-key-0123456789abcdef"}, "none"),
        ({"Authorization": f"Bearer {READ_KEY}"}, "read"),
        ({"X-API-Key": WRITE_KEY}, "write"),
    ],
    ids=["no key", "unknown key", "read key", "write key"],
)
async def test_access_reports_what_the_presented_key_may_do(
    client: Client, headers: dict[str, str], expected: str
) -> None:
    response = await client.get("/api/ingest/access", headers=headers)

    assert (response.status_code, response.json()) == (
        200,
        {"authEnabled": True, "access": expected},
    )


async def test_access_without_auth_is_write(redis: Redis, redis_url: str) -> None:
    async with app_client(Settings(stream_shards=1), redis_url) as client:
        response = await client.get("/api/ingest/access")
    assert response.json() == {"authEnabled": False, "access": "write"}


async def test_openapi_documents_the_read_side_with_parameters_and_errors(
    client: Client,
) -> None:
    spec = (await client.get("/schema/openapi.json")).json()
    paths = spec["paths"]

    def operation(path: str, method: str = "get") -> Any:
        return paths[path][method]

    assert {p["name"] for p in operation("/api/ingest/metrics/{metric}/range")["parameters"]} == {
        "metric",
        "from",
        "to",
        "source",
        "agg",
        "bucketMs",
        "label",
    }
    for path, method in [
        ("/api/ingest/metrics/{metric}/range", "get"),
        ("/api/ingest/charts", "get"),
        ("/api/ingest/sources", "get"),
        ("/api/ingest/dead-letters", "get"),
        ("/api/ingest/dead-letters", "delete"),
        ("/api/ingest/dead-letters/replay", "post"),
    ]:
        responses = operation(path, method)["responses"]
        assert {"401", "403", "422"} <= set(responses), path
        assert "400" not in responses or method == "post", path
    source = next(p for p in operation("/api/ingest/charts")["parameters"] if p["name"] == "source")
    # ECMA-262, not \\A...\\Z (test_openapi_contract checks every pattern with node).
    assert source["schema"]["pattern"] == ecma_pattern(SOURCE_PATTERN) == "^[A-Za-z0-9_.:@/\\-]+$"
    replay = operation("/api/ingest/dead-letters/replay", "post")
    assert set(replay["requestBody"]["content"]["application/json"]["schema"]["properties"]) == {
        "ids",
        "all",
        "max",
    }
    assert "404" in operation("/api/ingest/dead-letters/{letter_id}", "delete")["responses"]
