"""The producer on a local 3-primary Redis Cluster with 4 stream shards: found from a plain
REDIS_URL, appends routed to each shard's node, WAITAOF on the connection of the append it
confirms, and the summary, dead letters, process route and FILTER queries over every node."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from redis.asyncio import Redis
from redis.crc import key_slot

from ingest_producer.appender import EventAppender
from ingest_producer.asgi import build_app
from ingest_producer.auth import client_id
from ingest_shared import keys as k
from ingest_shared.functions import Appended
from ingest_shared.redis_client import call, create_redis
from ingest_shared.schema import EventOut, format_ms, now_ms
from ingest_shared.settings import Settings
from ingest_shared.streams import dead_letter_fields

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from httpx import AsyncClient as Client
    from redis.asyncio.cluster import RedisCluster
    from tests.conftest import AppClient

    from ingest_devtools.localcluster import LocalCluster

URL = "/api/ingest/events"
SHARDS = 4
API_KEY = "write-key-cluster-0123456789"
# INGEST_REDIS_MODE=auto (the default from the environment): build_app asks the node.
# The cardinality registry off: these tests count the append calls on each node.
SETTINGS = Settings(
    stream_shards=SHARDS,
    redis_mode="auto",
    write_keys=frozenset({API_KEY}),
    max_series=0,
    max_metrics=0,
)
KEYS = dataclasses.replace(SETTINGS, redis_mode="cluster").keys
SOURCES = [f"dev-{n}" for n in range(40)]
WAIT_S = 5.0


def events(count: int, metric: str = "cpu") -> list[dict[str, Any]]:
    base = now_ms() - 60_000
    return [
        {
            "source": SOURCES[n % len(SOURCES)],
            "metric": metric,
            "value": float(n),
            "occurredAt": format_ms(base + n),
        }
        for n in range(count)
    ]


def primaries(cluster: LocalCluster) -> dict[int, str]:
    """Port -> URL of every primary."""
    return {node.port: node.url for node in cluster.nodes if node.role == "primary"}


def port_of(cluster: RedisCluster, key: str) -> int:
    """The port of the primary ``cluster`` sends ``key``'s commands to."""
    node = cluster.get_node_from_key(key)
    assert node is not None
    return int(node.port)


async def command_calls(cluster: LocalCluster, command: str) -> dict[int, int]:
    """Calls of ``command`` per primary port since the last CONFIG RESETSTAT."""
    calls = {}
    for port, url in primaries(cluster).items():
        async with Redis.from_url(url) as node:
            stats = await node.info("commandstats")
        calls[port] = int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
    return calls


async def reset_stats(cluster: LocalCluster) -> None:
    for url in primaries(cluster).values():
        async with Redis.from_url(url) as node:
            await node.config_resetstat()


@pytest.fixture
async def client(
    redis_cluster: LocalCluster, redis_cluster_client: RedisCluster, serve: AppClient
) -> AsyncIterator[Client]:
    settings = dataclasses.replace(SETTINGS, redis_url=redis_cluster.url)
    async with serve(build_app(settings)) as http:
        http.headers["Authorization"] = f"Bearer {API_KEY}"
        yield http


def test_the_shards_spread_over_the_three_primaries(redis_cluster: LocalCluster) -> None:
    slots = [key_slot(shard.stream.encode()) for shard in KEYS.shards]
    owners = {redis_cluster.primary_for_slot(slot) for slot in slots}

    assert len(set(slots)) == SHARDS
    assert owners == set(primaries(redis_cluster))
    for shard, slot in zip(KEYS.shards, slots, strict=True):
        # Everything one append call touches is in its shard's slot.
        same_slot = (shard.dead_letter, shard.idempotency("d"), shard.rate_limit("c"))
        assert {key_slot(key.encode()) for key in same_slot} == {slot}


async def test_the_server_agrees_on_the_shards_slots(redis_cluster_client: RedisCluster) -> None:
    for shard in KEYS.shards:
        server = await redis_cluster_client.execute_command("CLUSTER KEYSLOT", shard.stream)
        assert server == key_slot(shard.stream.encode())


async def test_events_and_reads_flow_through_every_shard_and_node(
    client: Client, redis_cluster: LocalCluster, redis_cluster_client: RedisCluster
) -> None:
    cluster = redis_cluster_client
    with structlog.testing.capture_logs() as logs:
        ready = await client.get("/ready")
        batch = events(40)
        spread = await client.post(URL, json=batch)
        guarded_batch = events(5, metric="mem")
        headers = {"Idempotency-Key": "cluster-batch"}
        guarded = await client.post(URL, json=guarded_batch, headers=headers)
        repeat = await client.post(URL, json=guarded_batch, headers=headers)
        summary = (await client.get("/api/ingest/summary")).json()["queue"]
        deadline = time.monotonic() + WAIT_S
        while (await client.get("/ready")).json().get("backlog") != 45:
            assert time.monotonic() < deadline, "the backlog monitor never summed the shards"
            await asyncio.sleep(0.05)
        read = 0
        while (
            done := await client.post(
                "/api/ingest/workers/process", json={"consumer": "w1", "count": 12}
            )
        ).json()["read"]:
            assert done.status_code == 200, done.text
            read += done.json()["read"]
        sources = (await client.get("/api/ingest/sources?metric=cpu")).json()["sources"]
        metrics = (await client.get("/api/ingest/metrics")).json()["metrics"]
        fleet = await client.get("/api/ingest/metrics/cpu/range?agg=count&bucketMs=3600000")

    assert ready.status_code == 200, ready.text
    assert spread.status_code == 200, spread.text
    for event, entry_id in zip(batch, spread.json()["ids"], strict=True):
        stream = KEYS.shard_of_source(event["source"]).stream
        [(_, fields)] = await call(cluster, "XRANGE", stream, entry_id, entry_id)
        assert fields[k.FIELD_VALUE] == str(event["value"]).encode()
    assert guarded.status_code == 200, guarded.text
    mine = KEYS.shard_of_client(client_id(API_KEY))
    entries = await call(cluster, "XRANGE", mine.stream, guarded.json()["ids"][0], "+")
    assert [fields[k.FIELD_METRIC] for _, fields in entries] == [b"mem"] * 5
    assert repeat.headers["idempotent-replayed"] == "true"
    assert repeat.content == guarded.content
    assert (summary["total"], summary["added"], summary["lag"]) == (45, 45, 45)
    assert read == 45
    for shard in KEYS.shards:
        [info] = await cluster.xinfo_groups(shard.stream)
        assert (info["pending"], info["lag"], info["consumers"]) == (0, 0, 0)
    # The per-device series sit on every node; FILTER queries find them all.
    nodes = {port_of(cluster, KEYS.source_raw("cpu", s)) for s in SOURCES}
    assert nodes == set(primaries(redis_cluster))
    assert sorted(s["source"] for s in sources) == sorted(SOURCES)
    assert {m["metric"]: m["sourceCount"] for m in metrics} == {"cpu": 40, "mem": 5}
    assert fleet.status_code == 200, fleet.text
    assert sum(p["value"] for p in fleet.json()["points"]) == 40
    problems = [log for log in logs if any(w in str(log) for w in ("CROSSSLOT", "MOVED"))]
    assert problems == []
    assert not [log for log in logs if log["log_level"] == "error"]


async def test_dead_letters_of_every_shard_are_listed_replayed_and_deleted(
    client: Client, redis_cluster_client: RedisCluster
) -> None:
    payload = {
        k.FIELD_SOURCE: b"dev-1",
        k.FIELD_METRIC: b"cpu",
        k.FIELD_VALUE: b"2.5",
        k.FIELD_OCCURRED_AT: format_ms(now_ms() - 1_000).encode(),
    }
    letter = dead_letter_fields(b"1700000000000-0", "rejected", payload, "w1", now_ms())
    for shard in KEYS.shards:  # the same id in every shard
        await redis_cluster_client.xadd(shard.dead_letter, letter, id="5-0")

    listed = (await client.get("/api/ingest/dead-letters")).json()["deadLetters"]
    replayed = await client.post("/api/ingest/dead-letters/replay", json={"ids": ["5-0@3"]})
    deleted = await client.delete("/api/ingest/dead-letters/5-0@1")
    purged = await client.delete("/api/ingest/dead-letters?olderThanMs=0")

    assert [entry["id"] for entry in listed] == ["5-0@3", "5-0@2", "5-0@1", "5-0@0"]
    assert replayed.json()["replayed"] == 1
    assert await redis_cluster_client.xlen(KEYS.shards[3].stream) == 1
    assert deleted.json() == {"deleted": 1}
    assert purged.json() == {"deleted": 2}


async def test_waitaof_rides_the_connection_of_each_shards_node(
    redis_cluster: LocalCluster, redis_cluster_client: RedisCluster, serve: AppClient
) -> None:
    settings = dataclasses.replace(SETTINGS, redis_url=redis_cluster.url, durability="aof")
    # One source of each shard: one durable append per shard, each on that shard's node.
    firsts = {KEYS.shard_of_source(source).index: source for source in reversed(SOURCES)}
    owners = [
        redis_cluster.primary_for_slot(key_slot(shard.stream.encode())) for shard in KEYS.shards
    ]
    async with serve(build_app(settings)) as http:
        http.headers["Authorization"] = f"Bearer {API_KEY}"
        await reset_stats(redis_cluster)
        answers = [
            (await http.post(URL, json={"source": firsts[i], "metric": "cpu", "value": 1.0}))
            for i in range(SHARDS)
        ]
        fcalls = await command_calls(redis_cluster, "fcall")
        waits = await command_calls(redis_cluster, "waitaof")

    assert [answer.status_code for answer in answers] == [200] * SHARDS
    expected = {port: owners.count(port) for port in primaries(redis_cluster)}
    assert fcalls == expected
    assert waits == expected
    for shard, owner in zip(KEYS.shards, owners, strict=True):
        async with Redis.from_url(primaries(redis_cluster)[owner]) as node:
            assert await node.xlen(shard.stream) == 1  # on that node itself


async def test_a_stale_slot_table_is_fixed_and_the_durable_append_sent_again(
    redis_cluster: LocalCluster, redis_cluster_client: RedisCluster
) -> None:
    settings = dataclasses.replace(
        SETTINGS, redis_url=redis_cluster.url, redis_mode="cluster", durability="aof"
    )
    source = SOURCES[0]
    shard = KEYS.shard_of_source(source)
    slot = key_slot(shard.stream.encode())
    redis = create_redis(redis_cluster.url, socket_timeout=3, cluster=True)
    try:
        appender = EventAppender(redis, settings)
        await appender.load()
        assert isinstance(redis, type(redis_cluster_client))
        right = port_of(redis, shard.stream)
        [wrong, *_] = [node for node in redis.get_primaries() if int(node.port) != right]
        redis.nodes_manager.slots_cache[slot] = [wrong]  # as after a resharding
        await reset_stats(redis_cluster)

        result = await appender.append([EventOut(source, "cpu", 1.0, format_ms(now_ms()))])

        fcalls = await command_calls(redis_cluster, "fcall")
        waits = await command_calls(redis_cluster, "waitaof")
        fixed = port_of(redis, shard.stream)
    finally:
        await redis.aclose()

    assert isinstance(result, Appended)
    assert await call(redis_cluster_client, "XLEN", shard.stream) == 1  # appended once
    assert fixed == right
    assert fcalls[right] == 1
    assert fcalls[int(wrong.port)] == 0  # answered MOVED: did not run
    assert waits[right] == 1  # the confirmation that counts
