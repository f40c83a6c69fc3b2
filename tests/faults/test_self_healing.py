"""Faults that used to need a human: Redis restarted empty, flushed, or stalled under load.

The real producer and worker run as processes against a private Redis while a steady load of
batches is posted. After each fault, every event accepted once Redis was back must be in its
device series, and nothing may stay pending: the worker recreates a lost group by itself and
re-reads its own pending entries after a reconnect instead of waiting for XAUTOCLAIM (one
minute here, far longer than the tests wait).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis
from tests.faults.checker import check, drain
from tests.faults.harness import Load, Services, eventually, pending

from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from tests.conftest import LocalRedisFactory
    from tests.faults.checker import Report

    Record = Callable[[Report], None]

pytestmark = pytest.mark.slow

STEADY_S = 1.5
AFTER_RECOVERY_S = 2.5
# Far below INGEST_CLAIM_IDLE_MS (60 s): only the worker's own recovery can meet it.
DRAIN_WITHIN_S = 15.0
GROUP = Settings().consumer_group
# Rows of the loss checker's table; "since" faults judge what was sent after them only.
FLUSHED = "FLUSHALL (since the flush)"
RESTARTED = "Redis restarted empty (since the restart)"
STALLED = "Redis SIGSTOPped 7 s"
STREAMS = [shard.stream for shard in Settings().keys.shards]


async def run_fault(
    services: Services,
    redis: Redis,
    fault: Callable[[], Awaitable[None]],
    record: Record,
    *,
    name: str,
    everything_survives: bool,
) -> None:
    """Load, fault, load; then the loss checker: every event accepted after the fault (or all
    of them) stored, nothing pending. Requests sent before a fault that may lose them count as
    "maybe"."""
    with services.running("ingest-producer", "ingest-worker"):
        await services.ready()
        load = Load(services.base_url)
        async with load.running():
            await asyncio.sleep(STEADY_S)
            await fault()
            back = time.monotonic()
            await asyncio.sleep(AFTER_RECOVERY_S)
            services.alive()  # neither service gave up
        assert load.accepted(sent_after=back), (
            f"nothing was accepted after the fault: {load.statuses()}"
        )
        settings = services.settings
        drained_s = await drain(redis, settings, DRAIN_WITHIN_S)
        since = None if everything_survives else back
        report = await check(redis, settings, load.outcomes, name=name, since=since)
        report.notes = {
            "drained in": f"{drained_s:.1f} s",
            "after Redis was back": f"{time.monotonic() - back:.1f} s",
        }
        record(report)
        print(f"\n  recovery: {report.line()}; {report.notes}")
        assert report.ok, "\n".join(report.problems())
        services.alive()


async def test_flushall_under_load_recreates_the_group_and_loses_nothing_after(
    local_redis_server: LocalRedisFactory, tmp_path: Path, record: Record
) -> None:
    server = local_redis_server()
    async with Redis.from_url(server.url) as redis:

        async def flush() -> None:
            await redis.flushall()

        await run_fault(
            Services(server.url, tmp_path),
            redis,
            flush,
            record,
            name=FLUSHED,
            everything_survives=False,
        )
        assert "consumer_group_recreated" in Services(server.url, tmp_path).log("ingest-worker")


async def test_restart_without_persistence_under_load_recovers_without_a_human(
    local_redis_server: LocalRedisFactory, tmp_path: Path, record: Record
) -> None:
    server = local_redis_server(appendonly=False)
    async with Redis.from_url(server.url) as redis:

        async def restart_empty() -> None:
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(server.start)

        await run_fault(
            Services(server.url, tmp_path),
            redis,
            restart_empty,
            record,
            name=RESTARTED,
            everything_survives=False,
        )


async def test_stall_longer_than_the_socket_timeout_delays_nothing_until_xautoclaim(
    local_redis_server: LocalRedisFactory, tmp_path: Path, record: Record
) -> None:
    server = local_redis_server(appendonly=True)
    pid = server.pid
    assert pid is not None
    # The worker's socket timeout is INGEST_BLOCK_MS (0.5 s) + 5 s: stall past it.
    stall_s = 7.0
    async with Redis.from_url(server.url) as redis:

        async def stall() -> None:
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(stall_s)
            finally:
                os.kill(pid, signal.SIGCONT)

        await run_fault(
            Services(server.url, tmp_path),
            redis,
            stall,
            record,
            name=STALLED,
            everything_survives=True,
        )


async def test_producer_recreates_a_lost_group_while_no_worker_runs(
    local_redis_server: LocalRedisFactory, tmp_path: Path
) -> None:
    server = local_redis_server()
    services = Services(server.url, tmp_path)
    async with Redis.from_url(server.url) as redis:
        with services.running("ingest-producer"):
            await services.ready()
            await redis.flushall()
            load = Load(services.base_url, concurrency=1)
            async with load.running():
                await asyncio.sleep(0.5)

            async def groups_back() -> bool:
                for stream in STREAMS:
                    groups = await redis.xinfo_groups(stream) if await redis.exists(stream) else []
                    if not any(g["name"] == GROUP.encode() for g in groups):
                        return False
                return True

            await eventually(groups_back, 5.0, "the producer to recreate the groups")
            lag = length = 0
            for stream in STREAMS:
                [group] = await redis.xinfo_groups(stream)
                # At ID 0: every accepted event waits for the workers to come.
                assert group["last-delivered-id"] == b"0-0"
                lag += group["lag"]
                length += await redis.xlen(stream)
            assert lag == length == len(load.accepted()) > 0
            assert await pending(redis) == 0
        assert "consumer_group_recreated" in services.log("ingest-producer")
