"""Workers on a local 3-primary Redis Cluster with 4 stream shards: every entry stored, the
per-device series of a shard in its slot, and a killed worker's shards taken over."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from redis.crc import key_slot

from ingest_shared import keys as k
from ingest_shared.processor import create_processor
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from redis.asyncio.cluster import RedisCluster

    from ingest_devtools.localcluster import LocalCluster
    from ingest_shared.streams import Entry

pytestmark = pytest.mark.slow

SHARDS = 4
SOURCES = 40
KEYS = replace(Settings(), stream_shards=SHARDS, redis_mode="cluster").keys
BIN = Path(sys.executable).parent


@contextlib.contextmanager
def worker(url: str, name: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_"))}
    env = base | {
        "REDIS_URL": url,
        "INGEST_STREAM_SHARDS": str(SHARDS),
        "INGEST_CONSUMER_NAME": name,
        "INGEST_CLAIM_IDLE_MS": "3000",
        "INGEST_CLAIM_INTERVAL_MS": "200",
        "INGEST_BLOCK_MS": "200",
        "INGEST_WORKER_HTTP_PORT": "0",
        "INGEST_LOG_FORMAT": "json",
    }
    with log.open("ab") as out:
        process = subprocess.Popen([str(BIN / "ingest-worker")], env=env, stdout=out, stderr=out)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def enqueue(cluster: RedisCluster, first: int, count: int, base_ms: int) -> None:
    for n in range(first, first + count):
        source = f"dev-{n % SOURCES}"
        fields = {
            k.FIELD_SOURCE: source,
            k.FIELD_METRIC: f"m{n % 3}",
            k.FIELD_VALUE: str(n),
            k.FIELD_OCCURRED_AT: format_ms(base_ms + n),
        }
        await cluster.xadd(KEYS.shard_of_source(source).stream, fields)  # type: ignore[arg-type]


async def stored(cluster: RedisCluster, total: int) -> bool:
    found = 0
    for n in range(SOURCES):
        for metric in ("m0", "m1", "m2"):
            key = KEYS.source_raw(metric, f"dev-{n}")
            if await cluster.exists(key):
                found += len(await cluster.execute_command("TS.RANGE", key, "-", "+"))
    return found == total


async def test_two_workers_drain_every_shard_and_survive_one_being_killed(
    redis_cluster: LocalCluster, redis_cluster_client: RedisCluster, tmp_path: Path
) -> None:
    cluster = redis_cluster_client
    base = now_ms() - 120_000
    slots = {key_slot(shard.stream.encode()) for shard in KEYS.shards}
    nodes = [cluster.get_node_from_key(shard.stream) for shard in KEYS.shards]
    owners = {node.name for node in nodes if node is not None}
    assert len(slots) == SHARDS
    assert len(owners) == 3  # the shards spread over the three primaries

    with (
        worker(redis_cluster.url, "worker-a", tmp_path / "a.log") as a,
        worker(redis_cluster.url, "worker-b", tmp_path / "b.log") as b,
    ):
        await enqueue(cluster, 0, 200, base)
        await eventually(lambda: stored(cluster, 200))

        a.send_signal(signal.SIGKILL)
        a.wait()
        await enqueue(cluster, 200, 200, base)
        await eventually(lambda: stored(cluster, 400))
        for shard in KEYS.shards:
            assert (await cluster.xpending(shard.stream, Settings().consumer_group))["pending"] == 0
        assert b.poll() is None

    # Every per-device series of a source sits in its shard's slot.
    for n in range(SOURCES):
        source = f"dev-{n}"
        assert key_slot(KEYS.source_raw("m0", source).encode()) == key_slot(
            KEYS.shard_of_source(source).stream.encode()
        )
    logs = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    assert "CROSSSLOT" not in logs
    assert "MOVED" not in logs
    assert "shard_taken" in (tmp_path / "b.log").read_text()


async def test_a_shard_batch_is_one_ts_madd_with_every_series_in_the_shard_slot(
    redis_cluster_client: RedisCluster,
) -> None:
    cluster = redis_cluster_client
    settings = replace(Settings(), stream_shards=SHARDS, redis_mode="cluster")
    shard = KEYS.shards[1]
    sources = [f"dev-{n}" for n in range(SOURCES) if KEYS.shard_of_source(f"dev-{n}") == shard]
    assert len(sources) > 3
    base = now_ms() - 60_000
    await cluster.xgroup_create(shard.stream, settings.consumer_group, "0", mkstream=True)
    for n in range(120):  # 3 metrics x the shard's sources, many in one millisecond
        fields = {
            k.FIELD_SOURCE: sources[n % len(sources)],
            k.FIELD_METRIC: f"m{n % 3}",
            k.FIELD_VALUE: str(n),
            k.FIELD_OCCURRED_AT: format_ms(base + n // 10),
        }
        await cluster.xadd(shard.stream, fields)  # type: ignore[arg-type]
    reply = await cluster.execute_command(
        "XREADGROUP",
        "GROUP",
        settings.consumer_group,
        "c",
        "COUNT",
        500,
        "STREAMS",
        shard.stream,
        ">",
    )
    entries: list[Entry] = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
    node = cluster.get_node_from_key(shard.stream)
    assert node is not None

    async def madd_calls() -> int:
        stats = await cluster.info("commandstats", target_nodes=node)
        return int(stats.get("cmdstat_ts.madd", {}).get("calls", 0))

    processor = create_processor(cluster, settings, shard)
    before = await madd_calls()
    result = await processor.process(entries, "c")

    assert (result.processed, result.acked) == (120, 120)
    assert await madd_calls() - before == 1  # devices and per-metric partials together
    for metric in ("m0", "m1", "m2"):
        partial = KEYS.metric_raw(metric, shard)
        assert key_slot(partial.encode()) == key_slot(shard.stream.encode())
        assert len(await cluster.execute_command("TS.RANGE", partial, "-", "+")) == 12
