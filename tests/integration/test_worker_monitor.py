"""The worker's /health and /metrics, served over real HTTP while a real worker runs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.ports import free_port

from ingest_shared import keys as k
from ingest_shared.processor import create_processor
from ingest_shared.redis_client import call, create_redis
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings
from ingest_worker.daemon import Worker
from ingest_worker.monitor import Heartbeat, start_monitor

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from redis.asyncio import Redis
    from tests.conftest import LocalRedisFactory

STREAM = Settings(stream_shards=1).stream_key


def settings_for(url: str) -> Settings:
    return replace(
        Settings(stream_shards=1),
        redis_url=url,
        block_ms=50,
        claim_interval_ms=20,
        consumer_name="monitored",
    )


@contextlib.asynccontextmanager
async def monitored_worker(url: str, max_silence_s: float) -> AsyncIterator[str]:
    """A running Worker with its monitor on a free port; yields the monitor's base URL."""
    settings = settings_for(url)
    heartbeat = Heartbeat(max_silence_s)
    port = free_port()
    server = await start_monitor("127.0.0.1", port, heartbeat)
    client = create_redis(url, socket_timeout=1.0)
    worker = Worker(client, create_processor(client, settings), settings, heartbeat)
    task = asyncio.create_task(worker.run())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
        await client.aclose()
        server.close()
        await server.wait_closed()


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def scrape(http: httpx.AsyncClient) -> dict[str, float]:
    """Every sample of /metrics, keyed by name and labels."""
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


async def test_metrics_count_a_known_workload_exactly(redis: Redis, redis_url: str) -> None:
    base = now_ms() - 60_000
    async with (
        monitored_worker(redis_url, 30.0) as url,
        httpx.AsyncClient(base_url=url, timeout=5) as http,
    ):
        before = await scrape(http)
        for n in range(7):
            fields: dict[bytes, str] = {
                k.FIELD_SOURCE: f"dev-{n % 2}",
                k.FIELD_METRIC: "cpu",
                k.FIELD_VALUE: str(n),
                k.FIELD_OCCURRED_AT: format_ms(base + n),
            }
            flat: list[bytes | str] = list(itertools.chain.from_iterable(fields.items()))
            await call(redis, "XADD", STREAM, "*", *flat)
        for _ in range(2):
            await redis.xadd(STREAM, {"garbage": "1"})

        async def all_acked() -> bool:
            after = await scrape(http)
            return delta(before, after, "ingest_worker_acked_total{}") == 9

        await eventually(all_acked)
        after = await scrape(http)

    assert delta(before, after, "ingest_worker_events_processed_total{}") == 7
    assert delta(before, after, "ingest_worker_samples_stored_total{}") == 14
    dead = [name for name in after if name.startswith("ingest_worker_dead_lettered_total{")]
    assert sum(delta(before, after, name) for name in dead) == 2
    assert delta(before, after, "ingest_worker_batch_size_sum{}") == 9
    assert delta(before, after, "ingest_worker_event_age_seconds_count{}") >= 1
    assert after["ingest_worker_last_progress_timestamp_seconds{}"] > time.time() - 30


async def test_health_turns_503_while_redis_is_gone_and_200_after(
    local_redis_server: LocalRedisFactory,
) -> None:
    server = local_redis_server()
    async with (
        monitored_worker(server.url, max_silence_s=1.0) as url,
        httpx.AsyncClient(base_url=url, timeout=5) as http,
    ):

        async def health_is(status: int) -> bool:
            return (await http.get("/health")).status_code == status

        await eventually(lambda: health_is(200))
        await asyncio.to_thread(server.stop)
        await eventually(lambda: health_is(503))
        body = (await http.get("/health")).json()
        assert body["status"] == "stalled"
        assert body["silence_s"] > body["max_silence_s"] == 1.0

        await asyncio.to_thread(server.start)
        await eventually(lambda: health_is(200))


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nope HTTP/1.1\r\n\r\n", 404),
        (b"POST /health HTTP/1.1\r\n\r\n", 405),
        (b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", 200),
    ],
)
async def test_monitor_answers_other_paths_and_methods_plainly(
    request_bytes: bytes, status: int
) -> None:
    port = free_port()
    server = await start_monitor("127.0.0.1", port, Heartbeat())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    assert answer.startswith(b"HTTP/1.1 %d " % status)


async def test_monitor_drops_an_oversized_request_head_without_answering() -> None:
    port = free_port()
    server = await start_monitor("127.0.0.1", port, Heartbeat())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    assert answer == b""


def test_heartbeat_goes_stale_after_its_silence_limit() -> None:
    now = [100.0]
    heartbeat = Heartbeat(30.0, clock=lambda: now[0])
    now[0] += 29.9
    assert heartbeat.healthy()
    now[0] += 0.2
    assert not heartbeat.healthy()
    heartbeat.beat()
    assert heartbeat.healthy()
