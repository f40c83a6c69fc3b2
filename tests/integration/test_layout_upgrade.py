"""Upgrading a deployment of the one-stream layout (every release before the sharded default)
to the default of eight shards, as docs/scaling.md's *Upgrading from one stream* says: the new
release refuses to start on the old layout with a line saying what to do; after the old stream is
drained and the layout record deleted, it starts, nothing is lost, and queries answer over the
old and the new data."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING, Any

import pytest

from ingest_producer.asgi import build_app
from ingest_shared import keys as k
from ingest_shared.exceptions import ConfigurationError
from ingest_shared.redis_client import call, create_redis
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings
from ingest_shared.streams import check_layout
from ingest_worker.cli import runner_for
from ingest_worker.monitor import Heartbeat

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from httpx import AsyncClient
    from redis.asyncio import Redis
    from tests.conftest import AppClient

URL = "/api/ingest/events"
SOURCES = [f"dev-{n}" for n in range(12)]
# A minute boundary well inside the retention: old readings in one minute, new in the next.
MINUTE = (now_ms() - 600_000) // 60_000 * 60_000


def settings_for(url: str, shards: int) -> Settings:
    return dataclasses.replace(
        Settings(),
        redis_url=url,
        stream_shards=shards,
        block_ms=50,
        claim_interval_ms=50,
        consumer_name=f"worker-{shards}",
    )


def readings(first_ms: int, value: float) -> list[dict[str, Any]]:
    """One reading per source, one millisecond apart."""
    return [
        {"source": s, "metric": "cpu", "value": value, "occurredAt": format_ms(first_ms + n)}
        for n, s in enumerate(SOURCES)
    ]


@contextlib.asynccontextmanager
async def worker(settings: Settings) -> AsyncIterator[None]:
    """The worker process's runner (shard ownership) on its own client; stopped cleanly."""
    client = create_redis(settings.redis_url, socket_timeout=2.0)
    runner = runner_for(client, settings, Heartbeat())
    task = asyncio.create_task(runner.run())
    try:
        yield
    finally:
        runner.stop()
        try:
            await asyncio.wait_for(task, 15)
        finally:
            await client.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def drained(http: AsyncClient, added: int) -> bool:
    queue = (await http.get("/api/ingest/summary")).json()["queue"]
    return bool(queue["added"] == added and queue["pending"] == 0 and queue["lag"] == 0)


async def test_a_one_stream_deployment_upgrades_to_eight_shards_losing_nothing(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    old, new = settings_for(redis_url, 1), settings_for(redis_url, 8)
    # The old deployment: one stream, one per-metric series, data stored, entries in flight.
    async with serve(build_app(old)) as http:
        assert (await http.post(URL, json=readings(MINUTE + 1_000, 10.0))).status_code == 200
        async with worker(old):
            await eventually(lambda: drained(http, len(SOURCES)))
        waiting = await http.post(URL, json=readings(MINUTE + 2_000, 20.0))
        assert waiting.status_code == 200  # accepted while no worker runs: still in the stream
    assert await redis.exists(old.keys.raw("cpu"))

    # The new release refuses the old layout, saying what to do, and changes nothing.
    with pytest.raises(ConfigurationError, match="INGEST_STREAM_SHARDS=8") as refused:
        await check_layout(redis, new.keys)
    assert "migration" in str(refused.value)
    # Releases older than the layout record are recognised by their unfinished stream.
    await redis.delete(old.keys.layout)
    with pytest.raises(ConfigurationError, match=f"still holds {len(SOURCES)} entries"):
        await check_layout(redis, new.keys)
    assert not await redis.exists(new.keys.shards[0].stream)

    # The procedure: drain the old stream with the old setting, then delete the record.
    async with serve(build_app(old)) as http, worker(old):
        await eventually(lambda: drained(http, 2 * len(SOURCES)))
    await redis.delete(old.keys.layout)

    async with serve(build_app(new)) as http, worker(new):
        posted = await http.post(URL, json=readings(MINUTE + 61_000, 40.0))
        assert posted.status_code == 200
        await eventually(lambda: drained(http, len(SOURCES)))
        # Each device's series holds its old and new readings: nothing lost, same keys.
        for n, source in enumerate(SOURCES):
            points = (
                await http.get("/api/ingest/metrics/cpu/range", params={"source": source})
            ).json()["points"]
            times = [MINUTE + 1_000 + n, MINUTE + 2_000 + n, MINUTE + 61_000 + n]
            assert [(p["timestampMs"], p["value"]) for p in points] == list(
                zip(times, (10.0, 20.0, 40.0), strict=True)
            )
        # The fleet answers over both minutes (old minute from the old data alone).
        ranged = await http.get(
            "/api/ingest/metrics/cpu/range",
            params={"agg": "avg", "bucketMs": 60_000, "from": MINUTE, "to": MINUTE + 119_999},
        )
        assert [(p["timestampMs"], p["value"]) for p in ranged.json()["points"]] == [
            (MINUTE, 15.0),
            (MINUTE + 60_000, 40.0),
        ]
        # The newest sample is the new layout's, from a per-shard partial.
        summary = (await http.get("/api/ingest/summary")).json()
        [cpu] = summary["metrics"]
        assert cpu["raw"]["timestampMs"] == MINUTE + 61_000 + len(SOURCES) - 1
        partials = await call(
            redis, "TS.QUERYINDEX", f"{k.LABEL_METRIC}=cpu", f"{k.LABEL_KIND}={k.KIND_RAW}"
        )
        assert old.keys.raw("cpu").encode() in partials
        assert len(partials) > 1
    assert await redis.hgetall(new.keys.layout) == {b"shards": b"8", b"cluster": b"0"}
