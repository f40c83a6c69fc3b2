"""INGEST_DURABILITY: a 200 only once Redis confirmed the write (AOF fsync or replicas)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from ingest_producer.appender import EventAppender, NotDurable
from ingest_producer.asgi import build_app
from ingest_shared.functions import Appended, Idempotency
from ingest_shared.redis_client import call
from ingest_shared.schema import EventOut
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    import httpx
    from tests.conftest import AppClient, LocalRedisFactory

URL = "/api/ingest/events"
AOF = Settings(stream_shards=1, durability="aof")
STREAM = AOF.stream_key
EVENT = {"source": "sensor-a", "metric": "cpu", "value": 1.0}
EVENTS = [EventOut(f"s{i}", "cpu", float(i), "2026-03-19T12:00:00Z") for i in range(20)]
LOAD_CLIENTS = 32
LOAD_BEFORE_KILL_S = 2.5
LOAD_AFTER_KILL_S = 0.3


async def command_calls(redis: Redis, command: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_with_aof_on_writes_are_confirmed_with_one_waitaof_per_call(redis: Redis) -> None:
    appender = EventAppender(redis, AOF)
    await appender.load()
    await redis.config_resetstat()

    results = await asyncio.gather(*(appender.append([event]) for event in EVENTS))

    assert all(isinstance(result, Appended) for result in results)
    assert await command_calls(redis, "fcall") == 1
    assert await command_calls(redis, "waitaof") == 1


@pytest.mark.parametrize("body", [EVENT, [EVENT] * 3], ids=["one-event", "batch"])
async def test_with_aof_on_the_route_answers_200(
    redis: Redis, redis_url: str, serve: AppClient, body: object
) -> None:
    async with serve(build_app(dataclasses.replace(AOF, redis_url=redis_url))) as client:
        await redis.config_resetstat()
        response = await client.post(URL, json=body)

    assert response.status_code == 200, response.text
    assert await command_calls(redis, "waitaof") == 1


async def test_with_aof_off_the_route_answers_503_though_the_event_may_be_stored(
    local_redis_server: LocalRedisFactory, serve: AppClient
) -> None:
    server = local_redis_server(appendonly=False)
    async with serve(build_app(dataclasses.replace(AOF, redis_url=server.url))) as client:
        response = await client.post(URL, json=EVENT)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    detail = response.json()["detail"]
    assert "WAITAOF" in detail
    assert "appendonly" in detail
    async with Redis.from_url(server.url) as redis:
        assert await redis.xlen(STREAM) == 1  # at least once: it is there, unconfirmed


async def test_an_fsync_not_confirmed_within_the_timeout_is_503(
    local_redis_server: LocalRedisFactory, serve: AppClient
) -> None:
    server = local_redis_server(appendonly=True)
    async with Redis.from_url(server.url) as redis:
        await redis.config_set("appendfsync", "no")  # the AOF is written, never fsynced
    settings = dataclasses.replace(AOF, redis_url=server.url, durability_timeout_ms=100)
    async with serve(build_app(settings)) as client:
        response = await client.post(URL, json=EVENT)

    assert response.status_code == 503
    assert "fsync did not confirm the write within 100 ms" in response.json()["detail"]


async def test_a_repeat_of_an_unconfirmed_request_is_not_confirmed_either(
    local_redis_server: LocalRedisFactory,
) -> None:
    server = local_redis_server(appendonly=False)
    async with Redis.from_url(server.url) as redis:
        appender = EventAppender(redis, AOF)
        guard = Idempotency(AOF.keys.idempotency("k"), 60_000, "hash")
        first = await appender.append(EVENTS[:1], guard)
        again = await appender.append(EVENTS[:1], guard)
        assert isinstance(first, NotDurable)
        assert isinstance(again, NotDurable)
        assert await redis.xlen(STREAM) == 1


async def test_too_few_replicas_is_503(redis: Redis, redis_url: str, serve: AppClient) -> None:
    settings = Settings(
        stream_shards=1,
        redis_url=redis_url,
        durability="replicas",
        durability_replicas=1,
        durability_timeout_ms=50,
    )
    async with serve(build_app(settings)) as client:
        response = await client.post(URL, json=EVENT)

    assert response.status_code == 503
    assert "1 replica(s) did not confirm" in response.json()["detail"]


@pytest.mark.slow
async def test_every_acknowledged_event_survives_a_redis_crash(
    local_redis_server: LocalRedisFactory, serve: AppClient
) -> None:
    # What a SIGKILL can show: no 200 for an event Redis had not written when it died. Redis
    # writes the AOF before it replies, so a killed process loses nothing it acknowledged even
    # without WAITAOF; the fsync that WAITAOF waits for guards against an OS crash or power
    # loss, which a test cannot cause (the test above checks that its answer is obeyed).
    server = local_redis_server(appendonly=True)
    app = build_app(dataclasses.replace(AOF, redis_url=server.url))
    acknowledged: list[str] = []
    statuses: list[int] = []
    stop = asyncio.Event()

    async def load(client: httpx.AsyncClient, n: int) -> None:
        while not stop.is_set():
            batch = n % 4 == 0  # a quarter of the clients send NDJSON batches of 5
            body = (b'{"source":"s","metric":"cpu","value":%d}\n' % n) * (5 if batch else 1)
            headers = {"content-type": "application/x-ndjson" if batch else "application/json"}
            with contextlib.suppress(Exception):
                response = await client.post(URL, content=body, headers=headers)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    reply = response.json()
                    acknowledged.extend(reply["ids"] if batch else [reply["id"]])

    async with serve(app) as client:
        clients = [asyncio.create_task(load(client, n)) for n in range(LOAD_CLIENTS)]
        await asyncio.sleep(LOAD_BEFORE_KILL_S)
        server.kill()  # SIGKILL: no shutdown, no final fsync
        killed_at = len(acknowledged)
        await asyncio.sleep(LOAD_AFTER_KILL_S)
        stop.set()
        await asyncio.gather(*clients)

    server.start()  # replays the AOF
    deadline = time.monotonic() + 10
    async with Redis.from_url(server.url) as redis:
        while True:
            try:
                entries = await call(redis, "XRANGE", STREAM, "-", "+")
                break
            except Exception:  # still loading the AOF
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)

    stored = {entry_id.decode() for entry_id, _ in entries}
    assert killed_at > 50, f"only {killed_at} events were acknowledged before the crash"
    assert 503 in statuses  # the crash was noticed by the clients
    lost = [entry_id for entry_id in acknowledged if entry_id not in stored]
    assert lost == [], f"{len(lost)} of {len(acknowledged)} acknowledged events were lost"
