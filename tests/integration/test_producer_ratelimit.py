"""INGEST_RATE_LIMIT: events per window per API key, shared by every producer through Redis."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from tests.ports import free_port

from ingest_producer.asgi import build_app
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from redis.asyncio import Redis
    from tests.conftest import AppClient

URL = "/api/ingest/events"
KEY_A = "write-key-a-0123456789"
KEY_B = "write-key-b-0123456789"
LIMIT = 10
WINDOW_MS = 60_000
SETTINGS = Settings(
    stream_shards=1,
    write_keys=frozenset({KEY_A, KEY_B}),
    rate_limit=LIMIT,
    rate_window_ms=WINDOW_MS,
)
STREAM = SETTINGS.stream_key
EVENT = {"source": "sensor-a", "metric": "cpu", "value": 1.5}
START_TIMEOUT_S = 20.0


def auth(api_key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture
async def client(
    redis: Redis, redis_url: str, serve: AppClient
) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(build_app(dataclasses.replace(SETTINGS, redis_url=redis_url))) as client:
        yield client


def assert_rate_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["status_code"] == 429
    assert 1 <= int(response.headers["retry-after"]) <= WINDOW_MS // 1000


async def test_requests_over_the_limit_are_429_with_retry_after_and_enqueue_nothing(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    accepted = [await client.post(URL, json=EVENT, headers=auth()) for _ in range(LIMIT)]
    refused = await client.post(URL, json=EVENT, headers=auth())

    assert [r.status_code for r in accepted] == [200] * LIMIT
    assert_rate_limited(refused)
    assert await redis.xlen(STREAM) == LIMIT


async def test_the_limit_counts_events_not_requests(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    eight = await client.post(URL, json=[EVENT] * 8, headers=auth())
    three = await client.post(URL, json=[EVENT] * 3, headers=auth())  # 11 > 10: all refused
    two = await client.post(URL, json=[EVENT] * 2, headers=auth())  # 10: fits

    assert (eight.status_code, two.status_code) == (200, 200)
    assert_rate_limited(three)
    assert await redis.xlen(STREAM) == 10


async def test_a_batch_larger_than_the_whole_limit_is_413_and_costs_no_budget(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    # The measured bypass: a 10,000-event array passed whenever the window was empty.
    huge = await client.post(URL, json=[EVENT] * (LIMIT + 1), headers=auth())

    assert huge.status_code == 413, huge.text
    assert "can never be accepted" in huge.json()["detail"]
    assert await redis.xlen(STREAM) == 0
    assert (await client.post(URL, json=[EVENT] * LIMIT, headers=auth())).status_code == 200


async def test_each_api_key_has_its_own_budget(client: httpx.AsyncClient, redis: Redis) -> None:
    for _ in range(LIMIT):
        await client.post(URL, json=EVENT, headers=auth(KEY_A))

    assert_rate_limited(await client.post(URL, json=EVENT, headers=auth(KEY_A)))
    assert (await client.post(URL, json=EVENT, headers=auth(KEY_B))).status_code == 200


async def test_concurrent_requests_never_exceed_the_limit(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    responses = await asyncio.gather(
        *(client.post(URL, json=EVENT, headers=auth()) for _ in range(3 * LIMIT))
    )

    assert sorted(r.status_code for r in responses) == [200] * LIMIT + [429] * (2 * LIMIT)
    assert await redis.xlen(STREAM) == LIMIT


async def test_without_auth_each_client_address_has_its_own_budget(
    redis: Redis, redis_url: str
) -> None:
    settings = Settings(
        stream_shards=1, redis_url=redis_url, rate_limit=LIMIT, rate_window_ms=WINDOW_MS
    )
    app = build_app(settings)

    def from_address(host: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(host, 40000))  # type: ignore[arg-type]
        return httpx.AsyncClient(transport=transport, base_url="http://producer")

    async with app.lifespan(), from_address("10.0.0.1") as one, from_address("10.0.0.2") as two:
        assert (await one.post(URL, json=[EVENT] * LIMIT)).status_code == 200
        assert_rate_limited(await one.post(URL, json=EVENT))
        assert (await two.post(URL, json=[EVENT] * LIMIT)).status_code == 200
    assert await redis.xlen(STREAM) == 2 * LIMIT


# --- two producer processes ------------------------------------------------------------


@contextlib.contextmanager
def producer(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """An ``ingest-producer`` process; killed if it is still running afterwards."""
    binary = Path(sys.executable).parent / "ingest-producer"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(binary)], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_until_ready(http: httpx.AsyncClient, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert process.poll() is None, f"{process.args!r} exited with {process.returncode}"
        with contextlib.suppress(httpx.TransportError):
            if (await http.get("/health")).status_code == 200:
                return
        if time.monotonic() > deadline:
            pytest.fail("the producer did not start")
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_the_limit_is_shared_by_two_producer_processes(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_"))}
    env = base | {
        "REDIS_URL": redis_url,
        "INGEST_API_KEYS": f"{KEY_A},{KEY_B}",
        "INGEST_RATE_LIMIT": f"{LIMIT}/m",
        "INGEST_LOG_FORMAT": "json",
        "INGEST_STREAM_SHARDS": "1",  # the test reads the one stream
    }
    ports = [free_port(), free_port()]
    with (
        producer(env | {"INGEST_HTTP_PORT": str(ports[0])}, tmp_path / "p0.log") as first,
        producer(env | {"INGEST_HTTP_PORT": str(ports[1])}, tmp_path / "p1.log") as second,
    ):
        clients = [
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) for port in ports
        ]
        async with clients[0], clients[1]:
            await wait_until_ready(clients[0], first)
            await wait_until_ready(clients[1], second)

            # Alternating one at a time: both processes accept, from one budget ...
            alternating = [
                await clients[i % 2].post(URL, json=EVENT, headers=auth()) for i in range(6)
            ]
            # ... and concurrently through both: only what is left of it.
            concurrent = await asyncio.gather(
                *(clients[i % 2].post(URL, json=EVENT, headers=auth()) for i in range(3 * LIMIT))
            )

    assert [r.status_code for r in alternating] == [200] * 6
    assert sorted(r.status_code for r in concurrent) == [200] * (LIMIT - 6) + [429] * (
        3 * LIMIT - (LIMIT - 6)
    )
    for response in concurrent:
        if response.status_code == 429:
            assert_rate_limited(response)
    assert await redis.xlen(STREAM) == LIMIT
