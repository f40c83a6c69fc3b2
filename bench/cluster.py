"""`make bench-cluster`: drain and ingest on a local 3-primary Redis Cluster, by shards and
workers, in events/s and events per CPU-second (the issue's scaling table for a cluster).

    uv run python -m bench.cluster [--events 100000] [--quick]

Each row starts from a flushed cluster: N shards (INGEST_STREAM_SHARDS), W worker processes.
Drain: events prefilled into the shard streams (each event in its source's shard, 50 metrics x
200 sources, distinct timestamps), then timed until every shard's lag and pending are 0; CPU is
the workers' and the Redis nodes' (psutil); TS.MADD per batch is the TS.MADD calls every
primary ran during the drain over the worker batches (XACK calls: every batch ends with one),
from ``INFO commandstats`` deltas: 1.00 means one TS.MADD per shard batch. Ingest: one producer
process, wrk posting batches of 100 for a few seconds, no worker (events/s accepted).
Everything shares this machine's cores: read events per CPU-second for efficiency, events/s
for what the box does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import psutil  # type: ignore[import-untyped,unused-ignore]
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from bench.loadgen import ensure_wrk, run_wrk
from bench.procs import free_port
from ingest_devtools.localcluster import LocalCluster
from ingest_devtools.localredis import LocalRedis
from ingest_shared import keys as k
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

BIN = Path(sys.executable).parent
METRICS, SOURCES = 50, 200


def env_for(url: str, shards: int, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_"))}
    return base | {
        "REDIS_URL": url,
        "INGEST_REDIS_MODE": "cluster",
        "INGEST_STREAM_SHARDS": str(shards),
        "INGEST_LOG_LEVEL": "warning",
        "INGEST_WORKER_HTTP_PORT": "0",
        "INGEST_MAX_BACKLOG": "1000000000",
        **extra,
    }


@contextlib.contextmanager
def processes(commands: Sequence[tuple[list[str], dict[str, str]]]) -> Iterator[list[psutil.Popen]]:
    started = [
        psutil.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for argv, env in commands
    ]
    try:
        yield started
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(15)
            except psutil.TimeoutExpired:
                process.kill()


def cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for process in procs:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


async def flushed(cluster: RedisCluster) -> None:
    await cluster.execute_command("FLUSHALL", target_nodes=cluster.get_primaries())


async def prefill(cluster: RedisCluster, settings: Settings, events: int) -> None:
    keys = settings.keys
    base = now_ms() - 3_600_000
    pipe = cluster.pipeline(transaction=False)
    for n in range(events):
        source = f"dev-{n % SOURCES}"
        fields = {
            k.FIELD_SOURCE: source,
            k.FIELD_METRIC: f"m{n % METRICS}",
            k.FIELD_VALUE: str(n % 1000),
            k.FIELD_OCCURRED_AT: format_ms(base + n),
        }
        pipe.xadd(keys.shard_of_source(source).stream, fields)  # type: ignore[arg-type]
        if n % 5000 == 4999:
            await pipe.execute()
            pipe = cluster.pipeline(transaction=False)
    await pipe.execute()
    for shard in keys.shards:
        await cluster.xgroup_create(shard.stream, settings.consumer_group, "0", mkstream=True)


async def drained(cluster: RedisCluster, settings: Settings) -> bool:
    for shard in settings.keys.shards:
        for group in await cluster.xinfo_groups(shard.stream):
            if group["pending"] or group["lag"]:
                return False
    return True


async def command_calls(nodes: LocalCluster, names: Sequence[str]) -> dict[str, int]:
    """Calls of each of ``names`` (``ts.madd``, ``xack``) summed over every primary, from INFO
    commandstats; subtract two readings for what ran between them."""
    calls = dict.fromkeys(names, 0)
    for node in nodes.nodes:
        if node.role != "primary" or node.pid is None:
            continue
        client = Redis(host="127.0.0.1", port=node.port)
        try:
            stats = await client.info("commandstats")
        finally:
            await client.aclose()
        for name in names:
            found = stats.get(f"cmdstat_{name}")
            calls[name] += int(found["calls"]) if isinstance(found, dict) else 0
    return calls


async def drain_row(
    nodes: LocalCluster, cluster: RedisCluster, shards: int, workers: int, events: int
) -> tuple[float, float, float, float | None]:
    """(events/s, events per CPU-second of the workers and Redis, Redis CPU µs per event,
    TS.MADD calls per worker batch or None without batches)."""
    settings = replace(Settings(), stream_shards=shards, redis_mode="cluster")
    await flushed(cluster)
    await prefill(cluster, settings, events)
    redis_procs = [psutil.Process(node.pid) for node in nodes.nodes if node.pid]
    commands = [
        ([str(BIN / "ingest-worker")], env_for(nodes.url, shards, INGEST_CONSUMER_NAME=f"w{i}"))
        for i in range(workers)
    ]
    calls_before = await command_calls(nodes, ("ts.madd", "xack"))
    redis_cpu = cpu_seconds(redis_procs)
    started = time.monotonic()
    with processes(commands) as procs:
        while not await drained(cluster, settings):  # noqa: ASYNC110 - polling Redis
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        redis_used = cpu_seconds(redis_procs) - redis_cpu
        used = cpu_seconds(procs) + redis_used
        calls = await command_calls(nodes, ("ts.madd", "xack"))
    madds, batches = (calls[name] - calls_before[name] for name in ("ts.madd", "xack"))
    per_batch = madds / batches if batches else None
    return events / elapsed, events / max(used, 1e-9), redis_used / events * 1e6, per_batch


async def single_node_drain_row(
    shards: int, events: int
) -> tuple[float, float, float, float | None]:
    """:func:`drain_row` on one standalone Redis (1 worker), the cluster rows' reference."""
    with tempfile.TemporaryDirectory() as tmp, LocalRedis(Path(tmp)) as server:
        settings = replace(Settings(), stream_shards=shards)
        client = Redis.from_url(server.url)
        try:
            await prefill(client, settings, events)  # type: ignore[arg-type]
            [redis_proc] = [psutil.Process(server.pid)] if server.pid else []
            env = env_for(server.url, shards, INGEST_CONSUMER_NAME="w0")
            env["INGEST_REDIS_MODE"] = "standalone"
            before = await client.info("commandstats")
            redis_cpu = cpu_seconds([redis_proc])
            started = time.monotonic()
            with processes([([str(BIN / "ingest-worker")], env)]) as procs:
                while not await drained(client, settings):  # type: ignore[arg-type]  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                elapsed = time.monotonic() - started
                redis_used = cpu_seconds([redis_proc]) - redis_cpu
                used = cpu_seconds(procs) + redis_used
                after = await client.info("commandstats")
        finally:
            await client.aclose()

    def calls(stats: dict[str, object], name: str) -> int:
        found = stats.get(f"cmdstat_{name}")
        return int(found["calls"]) if isinstance(found, dict) else 0

    batches = calls(after, "xack") - calls(before, "xack")
    madds = calls(after, "ts.madd") - calls(before, "ts.madd")
    per_batch = madds / batches if batches else None
    return events / elapsed, events / max(used, 1e-9), redis_used / events * 1e6, per_batch


async def ingest_row(
    nodes: LocalCluster, cluster: RedisCluster, shards: int, duration_s: float, wrk: str
) -> tuple[float, float]:
    """(events/s accepted, per CPU-second of the producer and Redis) for wrk batches of 100."""
    await flushed(cluster)
    port = free_port()
    env = env_for(nodes.url, shards, INGEST_HTTP_PORT=str(port))
    redis_procs = [psutil.Process(node.pid) for node in nodes.nodes if node.pid]
    with processes([([str(BIN / "ingest-producer")], env)]) as procs:
        await asyncio.sleep(3.0)  # start-up, layout check, groups
        redis_cpu, producer_cpu = cpu_seconds(redis_procs), cpu_seconds(procs)
        result = await asyncio.to_thread(
            run_wrk,
            wrk,
            f"http://127.0.0.1:{port}/api/ingest/events",
            "post_batch.lua",
            duration_s=duration_s,
            connections=16,
            script_args=["100"],
        )
        used = cpu_seconds(procs) - producer_cpu + cpu_seconds(redis_procs) - redis_cpu
    accepted = result.ok_per_s * 100
    return accepted, accepted * duration_s / max(used, 1e-9)


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    events = 10_000 if args.quick else args.events
    duration = 3.0 if args.quick else 10.0
    wrk = ensure_wrk(install=True)
    print(f"# Redis Cluster, 3 primaries, {events:,} events per drain ({os.cpu_count()} cores)")
    print(
        "| Test | Shards | Processes | events/s | events per CPU-second | Redis µs/event "
        "| TS.MADD per batch |"
    )
    print("|---|---|---|---|---|---|---|")
    for shards in (1, 8):
        rate, per_cpu, redis_us, madd = await single_node_drain_row(shards, events)
        shown = "n/a" if madd is None else f"{madd:.2f}"
        print(
            f"| drain, single node (reference) | {shards} | 1 workers | {rate:,.0f} "
            f"| {per_cpu:,.0f} | {redis_us:.1f} | {shown} |",
            flush=True,
        )
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(Path(tmp), masters=3) as nodes:
        cluster = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in nodes.ports])
        try:
            for shards in (1, 4, 16):
                for workers in (1, 2, 4):
                    rate, per_cpu, redis_us, madd = await drain_row(
                        nodes, cluster, shards, workers, events
                    )
                    shown = "n/a" if madd is None else f"{madd:.2f}"
                    print(
                        f"| drain | {shards} | {workers} workers | {rate:,.0f} | {per_cpu:,.0f} "
                        f"| {redis_us:.1f} | {shown} |",
                        flush=True,
                    )
            if wrk is not None:
                for shards in (1, 4, 16):
                    rate, per_cpu = await ingest_row(nodes, cluster, shards, duration, wrk)
                    row = f"| ingest, batches of 100 | {shards} | 1 producer | {rate:,.0f} |"
                    print(f"{row} {per_cpu:,.0f} | n/a | n/a |", flush=True)
        finally:
            await cluster.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
