"""INGEST_READ_REDIS_URL: the read side's queries go to a replica (started here: a real
redis-server replicating a private primary), writes and dead letters stay on the primary,
and the replica's lag is on /metrics."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import pytest
from tests.readside import BASE_MS, event

from ingest_devtools.localredis import LocalRedis, embedded_available
from ingest_producer.asgi import build_app
from ingest_shared.exceptions import ConfigurationError
from ingest_shared.redis_client import create_redis
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from redis.asyncio import Redis
    from tests.conftest import AppClient

pytestmark = pytest.mark.skipif(not embedded_available(), reason="starts its own servers")

SETTINGS = Settings(stream_shards=1)
READ_COMMANDS = ("ts.range", "ts.mrange", "ts.mget", "ts.get")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[LocalRedis, LocalRedis]]:
    primary = LocalRedis(tmp_path / "primary").start()
    replica = LocalRedis(
        tmp_path / "replica", extra_args=["--replicaof", "127.0.0.1", str(primary.port)]
    )
    try:
        yield primary, replica.start()
    finally:
        replica.stop()
        primary.stop()


async def calls(client: Redis, commands: tuple[str, ...]) -> int:
    stats: dict[str, Any] = await client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in commands)


async def caught_up(primary: Redis, replica: Redis) -> None:
    for _ in range(200):
        mine = (await primary.info("replication"))["master_repl_offset"]
        theirs = (await replica.info("replication")).get("slave_repl_offset", -1)
        if theirs >= mine:
            return
        await asyncio.sleep(0.05)
    pytest.fail("the replica did not catch up")


async def test_queries_read_the_replica_and_writes_stay_on_the_primary(
    servers: tuple[LocalRedis, LocalRedis], serve: AppClient
) -> None:
    primary_server, replica_server = servers
    settings = dataclasses.replace(
        SETTINGS, redis_url=primary_server.url, read_redis_url=replica_server.url
    )
    primary = create_redis(primary_server.url, socket_timeout=5)
    replica = create_redis(replica_server.url, socket_timeout=5)
    try:
        async with serve(build_app(settings)) as client:
            batch = [event("cpu", "dev-1", 1.5, BASE_MS), event("cpu", "dev-2", 2.5, BASE_MS + 1)]
            assert (await client.post("/api/ingest/events", json=batch)).status_code == 200
            processed = await client.post(
                "/api/ingest/workers/process", json={"consumer": "w1", "count": 10}
            )
            assert processed.json()["processed"] == 2, processed.text
            await caught_up(primary, replica)
            await primary.config_resetstat()
            await replica.config_resetstat()

            fleet = await client.get("/api/ingest/metrics/cpu/range", params={"from": BASE_MS})
            assert [p["value"] for p in fleet.json()["points"]] == [1.5, 2.5], fleet.text
            summary = await client.get("/api/ingest/summary")
            assert summary.json()["metrics"][0]["raw"]["value"] == 2.5, summary.text
            sources = await client.get("/api/ingest/sources")
            assert [s["source"] for s in sources.json()["sources"]] == ["dev-1", "dev-2"]

            assert await calls(replica, READ_COMMANDS) >= 3
            assert await calls(primary, READ_COMMANDS) == 0
            # The monitor samples every 2 s; the first sample may predate the link.
            for _ in range(60):
                scraped = (await client.get("/metrics")).text
                if "ingest_read_replica_link_up 1.0" in scraped:
                    break
                await asyncio.sleep(0.1)
            assert "ingest_read_replica_link_up 1.0" in scraped
            [lag] = [
                line for line in scraped.splitlines() if line.startswith("ingest_read_replica_lag")
            ]
            assert float(lag.split()[1]) < 1_000  # caught up (only pings since)
    finally:
        await primary.aclose()
        await replica.aclose()


def test_a_read_replica_on_a_cluster_is_refused_with_a_clear_line() -> None:
    settings = dataclasses.replace(
        SETTINGS, redis_mode="cluster", read_redis_url="redis://127.0.0.1:1/0"
    )
    with pytest.raises(ConfigurationError, match="INGEST_READ_REDIS_URL"):
        build_app(settings)
