"""Redis unreachable or hanging: quick 503s with Retry-After, and recovery without a restart."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING

from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from ingest_producer.asgi import build_app
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from httpx import Response
    from tests.conftest import LocalRedisFactory

    from ingest_devtools.localredis import LocalRedis

URL = "/api/ingest/events"
GOOD = {"source": "sensor-a", "metric": "cpu", "value": 12.5}
# The bound for answering while Redis is away.
MAX_WAIT_S = 2.0

Client = AsyncTestClient[Litestar]


async def timed_post(client: Client) -> tuple[Response, float]:
    started = time.monotonic()
    response = await client.post(URL, json=GOOD)
    return response, time.monotonic() - started


def assert_unavailable(response: Response) -> None:
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert body["status_code"] == 503
    assert "Traceback" not in response.text


@contextlib.contextmanager
def frozen(server: LocalRedis) -> Iterator[None]:
    """The server keeps its socket open but answers nothing, like a hung or swapped host."""
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_stopped_redis_gives_503_with_retry_after_then_recovers_by_itself(
    local_redis_server: LocalRedisFactory,
) -> None:
    server = local_redis_server()
    async with AsyncTestClient(
        build_app(Settings(stream_shards=1, redis_url=server.url))
    ) as client:
        assert (await client.post(URL, json=GOOD)).status_code == 200

        server.stop()
        response, elapsed = await timed_post(client)
        assert_unavailable(response)
        assert elapsed < MAX_WAIT_S
        # The pooled connection died under the first request (its outcome is unknowable);
        # after that, connecting fails, so nothing can have been enqueued.
        refused = await client.post(URL, json=GOOD)
        assert_unavailable(refused)
        assert "nothing was enqueued" in refused.json()["detail"]
        for path in ("/api/ingest/summary", "/api/ingest/events/recent"):
            assert_unavailable(await client.get(path))
        assert_unavailable(
            await client.post("/api/ingest/workers/process", json={"consumer": "w", "count": 1})
        )
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        assert "redis" in ready.json()["reason"]
        assert (await client.get("/health")).status_code == 200

        # A fresh server without persistence: the stream and the function library are gone.
        server.start()
        recovered = await client.post(URL, json=GOOD)
        assert recovered.status_code == 200, recovered.text
        assert (await client.get("/ready")).status_code == 200

    async with Redis.from_url(server.url) as redis:
        assert await redis.xlen("telemetry:events") == 1


async def test_hanging_redis_gives_503_within_two_seconds_then_recovers(
    local_redis_server: LocalRedisFactory,
) -> None:
    server = local_redis_server()
    async with AsyncTestClient(
        build_app(Settings(stream_shards=1, redis_url=server.url))
    ) as client:
        assert (await client.post(URL, json=GOOD)).status_code == 200

        with frozen(server):
            response, elapsed = await timed_post(client)
            ready = await client.get("/ready")

        assert_unavailable(response)
        # Sent, then no answer: it may have run once Redis came back.
        assert "MAY have been enqueued" in response.json()["detail"]
        assert "Idempotency-Key" in response.json()["detail"]
        assert elapsed < MAX_WAIT_S
        assert ready.status_code == 503
        assert (await client.post(URL, json=GOOD)).status_code == 200


async def test_producer_starts_without_redis_and_serves_once_it_is_up(
    local_redis_server: LocalRedisFactory,
) -> None:
    server = local_redis_server()
    server.stop()
    async with AsyncTestClient(
        build_app(Settings(stream_shards=1, redis_url=server.url))
    ) as client:
        assert (await client.get("/health")).status_code == 200
        assert_unavailable((await timed_post(client))[0])

        server.start()

        assert (await client.post(URL, json=GOOD)).status_code == 200
        processed = await client.post(
            "/api/ingest/workers/process", json={"consumer": "w", "count": 10}
        )
        assert processed.json()["processed"] == 1
