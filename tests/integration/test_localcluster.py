"""The local Redis Cluster: it forms, a cluster client writes TimeSeries samples by slot, and a
replica takes over a killed primary."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisError

from ingest_devtools.localcluster import LocalCluster
from ingest_devtools.localredis import embedded_available

if TYPE_CHECKING:
    from pathlib import Path

SLOTS = 16384
FAILOVER_DEADLINE_S = 30.0


def keys_on_every_primary(cluster: LocalCluster) -> dict[int, bytes]:
    """One series key per primary port, each in a different slot."""
    primaries = {node.port for node in cluster.nodes if node.role == "primary"}
    found: dict[int, bytes] = {}
    for device in range(1000):
        key = f"telemetry:ts:{{cpu|dev-{device}}}:raw".encode()
        found.setdefault(cluster.primary_for_slot(key_slot(key)), key)
        if found.keys() == primaries:
            return found
    raise AssertionError(f"no key found for every primary: {found}")


async def test_cluster_forms_with_three_primaries_covering_every_slot(
    redis_cluster: LocalCluster,
) -> None:
    primaries = [node for node in redis_cluster.nodes if node.role == "primary"]
    ranges = sorted(r for node in primaries for r in node.slots)

    assert len(primaries) == 3
    assert all(node.pid is not None and not node.failed for node in redis_cluster.nodes)
    assert ranges[0][0] == 0
    assert ranges[-1][1] == SLOTS - 1
    assert all(prev[1] + 1 == nxt[0] for prev, nxt in itertools.pairwise(ranges))
    # How the services will recognise a cluster from a plain redis:// URL.
    async with Redis.from_url(redis_cluster.url) as plain:
        assert await plain.info("cluster") == {"cluster_enabled": 1}


async def test_ts_add_through_the_cluster_client_lands_on_each_slots_primary(
    redis_cluster: LocalCluster, redis_cluster_client: RedisCluster
) -> None:
    keys = keys_on_every_primary(redis_cluster)
    assert len({key_slot(key) for key in keys.values()}) == 3

    for value, key in enumerate(keys.values()):
        assert await redis_cluster_client.execute_command("TS.ADD", key, 1_000, value) == 1_000

    for value, (port, key) in enumerate(keys.items()):
        # Read back from the owning node itself: the sample is stored where its slot lives.
        async with Redis(port=port) as owner:
            latest = await owner.execute_command("TS.GET", key)  # type: ignore[no-untyped-call]
        assert latest == [1_000, float(value)]


@pytest.mark.skipif(not embedded_available(), reason="needs the embedded Redis binary")
async def test_replica_takes_over_a_killed_primary(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, masters=3, replicas_per_master=1, node_timeout_ms=2000) as cluster:
        key = b"telemetry:ts:{cpu|failover}:raw"
        victim = cluster.primary_for_slot(key_slot(key))
        (replica,) = (node.port for node in cluster.nodes if node.replica_of == victim)
        client = RedisCluster.from_url(
            cluster.url,
            socket_timeout=1.0,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            await client.initialize()
            owner = client.get_node_from_key(key.decode())
            # The write and its WAIT ride one connection to the owner, so WAIT counts the
            # replica acknowledging this very write.
            pipe = client.pipeline(transaction=False)
            pipe.execute_command("TS.ADD", key, 1_000, 1.0)
            pipe.execute_command("WAIT", 1, 2_000, target_nodes=owner)
            assert await pipe.execute() == [1_000, 1]

            killed_at = time.monotonic()
            cluster.kill(victim)
            recovered_after = await _seconds_until_write_succeeds(client, key, killed_at)
            print(f"\nfailover: writes to the killed primary's slots succeeded again after "
                  f"{recovered_after:.2f} s (cluster-node-timeout 2000 ms)")  # fmt: skip

            # The write went through as soon as the replica took over; the other nodes learn
            # it by gossip a moment later, and the topology is read from one of them.
            await asyncio.to_thread(cluster.wait_ok, FAILOVER_DEADLINE_S)
            assert cluster.primary_for_slot(key_slot(key)) == replica
            samples = await client.execute_command("TS.RANGE", key, "-", "+")
            assert samples[0] == [1_000, 1.0]
        finally:
            await client.aclose()


async def _seconds_until_write_succeeds(client: RedisCluster, key: bytes, since: float) -> float:
    deadline = since + FAILOVER_DEADLINE_S
    timestamp = 2_000
    while True:
        try:
            await client.execute_command("TS.ADD", key, timestamp, 2.0)
            return time.monotonic() - since
        except RedisError:
            if time.monotonic() > deadline:
                raise
        timestamp += 1
        await asyncio.sleep(0.05)
