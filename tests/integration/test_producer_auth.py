"""API keys: none / unknown / read / write key on every route, and what never leaks."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, NamedTuple

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from ingest_producer.asgi import build_app
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx
    from redis.asyncio import Redis

WRITE_KEY = "write-key-0123456789abcdef"
READ_KEY = "read-key-0123456789abcdef"
UNKNOWN_KEY = "nope-key-0123456789abcdef"
SETTINGS = Settings(write_keys=frozenset({WRITE_KEY}), read_keys=frozenset({READ_KEY}))
EVENT = {"source": "sensor-a", "metric": "cpu", "value": 1.0}

Client = AsyncTestClient[Litestar]


class Route(NamedTuple):
    method: str
    path: str
    body: object
    access: str


ROUTES = [
    Route("POST", "/api/ingest/events", EVENT, "write"),
    Route("POST", "/api/ingest/workers/process", {"consumer": "w1", "count": 1}, "write"),
    Route("GET", "/api/ingest/summary", None, "read"),
    Route("GET", "/api/ingest/events/recent", None, "read"),
]
OPEN_ROUTES = ["/health", "/ready", "/schema/openapi.json"]


@pytest.fixture
async def client(redis: Redis, redis_url: str) -> AsyncIterator[Client]:
    settings = dataclasses.replace(SETTINGS, redis_url=redis_url)
    async with AsyncTestClient(build_app(settings)) as c:
        yield c


async def send(client: Client, route: Route, headers: dict[str, str]) -> httpx.Response:
    if route.method == "POST":
        return await client.post(route.path, json=route.body, headers=headers)
    return await client.get(route.path, headers=headers)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.path)
async def test_missing_key_is_401_and_changes_nothing(
    client: Client, redis: Redis, route: Route
) -> None:
    response = await send(client, route, {})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["status_code"] == 401
    assert await redis.xlen(SETTINGS.stream_key) == 0


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.path)
async def test_unknown_key_is_401_and_never_echoed(client: Client, route: Route) -> None:
    response = await send(client, route, {"Authorization": f"Bearer {UNKNOWN_KEY}"})
    assert response.status_code == 401
    assert UNKNOWN_KEY not in response.text


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.path)
async def test_read_key_reads_but_may_not_write(client: Client, redis: Redis, route: Route) -> None:
    response = await send(client, route, {"X-API-Key": READ_KEY})
    assert response.status_code == (403 if route.access == "write" else 200), response.text
    assert await redis.xlen(SETTINGS.stream_key) == 0


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.path)
@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
async def test_write_key_may_do_everything(client: Client, route: Route, header: str) -> None:
    value = f"Bearer {WRITE_KEY}" if header == "Authorization" else WRITE_KEY
    response = await send(client, route, {header: value})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", OPEN_ROUTES)
async def test_probes_and_docs_need_no_key(client: Client, path: str) -> None:
    assert (await client.get(path)).status_code == 200


async def test_keys_never_reach_the_logs(
    client: Client, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    for key in (WRITE_KEY, READ_KEY, UNKNOWN_KEY):
        await client.post("/api/ingest/events", json=EVENT, headers={"X-API-Key": key})
    captured = capsys.readouterr()
    for key in (WRITE_KEY, READ_KEY, UNKNOWN_KEY):
        assert key not in caplog.text
        assert key not in captured.out + captured.err


async def test_without_keys_everything_is_open_with_one_warning(
    redis: Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(redis_url=redis_url)
    async with AsyncTestClient(build_app(settings)) as client:
        body = {**EVENT, "occurredAt": format_ms(now_ms())}
        assert (await client.post("/api/ingest/events", json=body)).status_code == 200
        assert (await client.get("/api/ingest/summary")).status_code == 200
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("auth_disabled") == 1
