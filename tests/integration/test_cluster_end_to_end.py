"""The whole pipeline on a local 3-primary Redis Cluster: 4 stream shards, a producer and two
workers as processes, HTTP load; every accepted event stored, the summary and range queries
right, and no CROSSSLOT or MOVED in any log."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

import httpx
import pytest
from tests.faults.harness import METRIC, Load, Services, eventually

from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

    from redis.asyncio.cluster import RedisCluster

    from ingest_devtools.localcluster import LocalCluster

pytestmark = pytest.mark.slow

SHARDS = 4
KEYS = replace(Settings(), stream_shards=SHARDS, redis_mode="cluster").keys
ENV = {"INGEST_STREAM_SHARDS": str(SHARDS), "INGEST_CLAIM_IDLE_MS": "3000"}


async def test_events_over_http_reach_their_series_on_every_shard(
    redis_cluster: LocalCluster, redis_cluster_client: RedisCluster, tmp_path: Path
) -> None:
    cluster = redis_cluster_client
    first = Services(redis_cluster.url, tmp_path, env=ENV | {"INGEST_CONSUMER_NAME": "w-a"})
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    second = Services(redis_cluster.url, second_dir, env=ENV | {"INGEST_CONSUMER_NAME": "w-b"})
    with first.running("ingest-producer", "ingest-worker"), second.running("ingest-worker"):
        await first.ready()
        load = Load(first.base_url, concurrency=4, sources=12)
        async with load.running():
            await asyncio.sleep(2.0)
        accepted = load.accepted()
        assert accepted
        assert set(load.statuses()) == {200}

        async with httpx.AsyncClient(base_url=first.base_url, timeout=10) as http:

            async def drained() -> bool:
                queue = (await http.get("/api/ingest/summary")).json()["queue"]
                return bool(queue["pending"] == 0 and queue["lag"] == 0)

            await eventually(drained, 30.0, "the workers to drain every shard")
            summary = (await http.get("/api/ingest/summary")).json()
            assert summary["queue"]["added"] == len(accepted)
            assert [m["metric"] for m in summary["metrics"]] == [METRIC]
            one = accepted[0]
            ranged = await http.get(
                f"/api/ingest/metrics/{METRIC}/range",
                params={"source": one.source, "from": str(one.timestamp_ms - 1)},
            )
            assert ranged.status_code == 200, ranged.text
            mine = [e for e in accepted if e.source == one.source]
            assert len(ranged.json()["points"]) == len(mine)
            fleet = (await http.get("/api/ingest/sources")).json()["sources"]
            assert len(fleet) == 12  # FILTER answered by every primary, merged

    for source in {event.source for event in accepted}:
        points = await cluster.execute_command(
            "TS.RANGE", KEYS.source_raw(METRIC, source), "-", "+"
        )
        assert len(points) == len([e for e in accepted if e.source == source])
    for name, services in (("a", first), ("b", second)):
        logs = services.log("ingest-worker")
        assert "CROSSSLOT" not in logs, name
        assert "MOVED" not in logs, name
    producer_log = first.log("ingest-producer")
    assert "CROSSSLOT" not in producer_log
    assert "MOVED" not in producer_log
