"""X-Forwarded-For is believed only from INGEST_TRUSTED_PROXIES, in a real ``ingest-producer``.

uvicorn trusts loopback as a proxy by default: without the setting, any local client could name
its own address in the header, and so get a fresh rate-limit budget per request with auth off.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from typing import TYPE_CHECKING

import httpx
from tests.integration.test_http_limits import EVENT, EVENTS, HOST, START_TIMEOUT_S, spawn
from tests.ports import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from redis.asyncio import Redis


@contextlib.asynccontextmanager
async def producer_url(redis_url: str, log: Path, **settings: str) -> AsyncIterator[str]:
    """The URL of an ``ingest-producer`` run with ``settings`` (INGEST_ names), once it serves."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_"))}
    port = free_port()
    env = base | {
        "REDIS_URL": redis_url,
        "INGEST_HTTP_PORT": str(port),
        "INGEST_LOG_FORMAT": "json",
        "INGEST_STREAM_SHARDS": "1",
        **settings,
    }
    process = spawn(env, log, None)
    url = f"http://{HOST}:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                assert process.poll() is None, "the producer exited; see its log"
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/health")).status_code == 200:
                        break
                assert time.monotonic() < deadline, "the producer did not start"
                await asyncio.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def statuses_claiming_other_addresses(url: str, count: int) -> list[int]:
    """POST ``count`` events from here, each claiming another address in X-Forwarded-For."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        return [
            (
                await http.post(EVENTS, json=EVENT, headers={"X-Forwarded-For": f"10.0.0.{i}"})
            ).status_code
            for i in range(count)
        ]


async def test_a_local_client_cannot_escape_the_rate_limit_with_x_forwarded_for(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with producer_url(redis_url, tmp_path / "producer.log", INGEST_RATE_LIMIT="2/m") as url:
        statuses = await statuses_claiming_other_addresses(url, 3)

    assert statuses == [200, 200, 429]


async def test_a_trusted_proxy_names_the_client_address(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    async with producer_url(
        redis_url,
        tmp_path / "producer.log",
        INGEST_RATE_LIMIT="2/m",
        INGEST_TRUSTED_PROXIES="127.0.0.1",
    ) as url:
        statuses = await statuses_claiming_other_addresses(url, 3)

    assert statuses == [200, 200, 200]  # three clients, one event each
