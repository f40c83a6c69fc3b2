"""Scenario 5: end-to-end latency at a steady offered load.

wrk offers `e2e_rate` events/s on a fixed timetable (bench/wrk/paced_event.lua) while a
probe in this process posts ~20 events/s on dedicated probe sources and, from each POST's
200, polls TS.GET on that event's per-source raw series every millisecond until the sample
is there. The figure is the probe latency; probes that never show up count as the timeout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bench.config import (
    DEAD_LETTER_KEY,
    METRICS_KEY,
    PRODUCT_DB,
    SERIES_PREFIX,
    STREAM_KEY,
)
from bench.loadgen import LoadGenError, WrkResult, log, run_wrk
from bench.procs import own_cpu_seconds
from bench.scenarios.common import EVENTS_PATH
from bench.scenarios.drain import start_worker, wait_drained

if TYPE_CHECKING:
    from collections.abc import Callable

    from bench.context import Bench
    from bench.procs import Server

PROBE_METRIC = "e2e-probe"
PROBE_SOURCES = 20
PROBE_TIMEOUT_S = 5.0
POLL_S = 0.001
MAX_POLL_S = 0.05  # the slowest poll of a waiting probe
POLL_BACKOFF = 0.02  # a waiting probe polls every 2% of its wait so far (at least POLL_S)
E2E = "e2e.latency"
E2E_P99_TARGET_MS = 50.0


def iso_ms(ms: int) -> str:
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@dataclass
class ProbeStats:
    latencies_ms: list[float] = field(default_factory=list)
    timeouts: int = 0
    rejected: int = 0
    timeout_s: float = PROBE_TIMEOUT_S  # what a probe that never showed up counts as

    def percentile(self, q: float) -> float | None:
        values = sorted(self.latencies_ms + [self.timeout_s * 1000] * self.timeouts)
        if not values:
            return None
        index = min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))
        return values[index]


class Probe:
    """Posts probe events and times how long each takes to become readable by TS.GET."""

    def __init__(
        self,
        base_url: str,
        redis_url: str,
        series_key: Callable[[str, str], str],
        *,
        poll_s: float = POLL_S,
        timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self.base_url = base_url
        self.redis_url = redis_url
        self.series_key = series_key
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.last_ts: dict[str, int] = {}
        self.counter = 0

    async def one(
        self, http: httpx.AsyncClient, client: aioredis.Redis, stats: ProbeStats | None
    ) -> None:
        self.counter += 1
        source = f"probe-{self.counter % PROBE_SOURCES}"
        ts = max(time.time_ns() // 1_000_000, self.last_ts.get(source, 0) + 1)
        self.last_ts[source] = ts
        body = {
            "source": source,
            "metric": PROBE_METRIC,
            "value": float(self.counter),
            "occurredAt": iso_ms(ts),
        }
        response = await http.post(EVENTS_PATH, json=body)
        accepted = time.perf_counter()
        if response.status_code != 200:
            if stats is not None:
                stats.rejected += 1
            return
        key = self.series_key(PROBE_METRIC, source)
        deadline = accepted + self.timeout_s
        while time.perf_counter() < deadline:
            try:
                sample = await client.execute_command("TS.GET", key)  # type: ignore[no-untyped-call]
            except ResponseError:
                sample = None  # the series does not exist yet
            if sample and int(sample[0]) >= ts:
                if stats is not None:
                    stats.latencies_ms.append((time.perf_counter() - accepted) * 1000)
                return
            # Polls back off with the wait (2% of it, at most every 50 ms): at a fixed 2 ms, a
            # few seconds of backlog had ~100 probes polling Redis 50,000 times a second,
            # which slowed the pipeline under test more than the load did.
            waited = time.perf_counter() - accepted
            await asyncio.sleep(max(self.poll_s, min(MAX_POLL_S, waited * POLL_BACKOFF)))
        if stats is not None:
            stats.timeouts += 1

    async def run(self, rate: float, duration_s: float, stats: ProbeStats | None) -> None:
        """Start one probe every 1/rate s for duration_s; wait for the stragglers."""
        interval = 1.0 / rate
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10.0) as http:
            client = aioredis.from_url(self.redis_url)
            try:
                tasks: list[asyncio.Task[None]] = []
                start = time.perf_counter()
                k = 0
                while (now := time.perf_counter()) - start < duration_s:
                    tasks.append(asyncio.create_task(self.one(http, client, stats)))
                    k += 1
                    await asyncio.sleep(max(0.0, start + k * interval - now))
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                await client.aclose()


async def _rep(bench: Bench, producer: Server, probe: Probe) -> tuple[WrkResult | None, ProbeStats]:
    cfg = bench.config
    stats = ProbeStats()
    assert bench.wrk is not None
    load = asyncio.create_task(
        asyncio.to_thread(
            functools.partial(
                run_wrk, bench.wrk, producer.base_url, "paced_event.lua",
                duration_s=cfg.e2e_duration_s, connections=cfg.e2e_connections,
                script_args=[str(cfg.e2e_rate)],
            )
        )
    )  # fmt: skip
    # Probe the steady part only: skip the first and last half second of the load.
    await asyncio.sleep(0.5)
    await probe.run(cfg.probe_rate, max(0.5, round(max(1, cfg.e2e_duration_s)) - 1.0), stats)
    try:
        result: WrkResult | None = await load
    except (LoadGenError, OSError) as exc:
        log(f"  wrk failed: {exc}")
        result = None
    return result, stats


def run(bench: Bench) -> None:
    cfg, results = bench.config, bench.results
    fig = results.figure(
        E2E, 5, f"End to end POST 200 -> TS.GET, {cfg.e2e_rate:,} events/s offered", "ms p99"
    )
    results.target("e2e_p99", "p99 ms", E2E, E2E_P99_TARGET_MS, comparison="<=")
    try:
        from ingest_shared.keys import Keys
    except ImportError as exc:
        fig.fail(f"ingest_shared.keys unavailable: {exc}")
        return
    if bench.wrk is None:
        fig.fail("wrk not installed")
        return
    keys = Keys(
        stream=STREAM_KEY,
        dead_letter=DEAD_LETTER_KEY,
        metrics=METRICS_KEY,
        series_prefix=SERIES_PREFIX,
    )
    producer = bench.producer(1)
    worker = start_worker(bench, 1) if producer is not None else None
    if producer is None or worker is None:
        fig.fail(bench.why_unavailable("producer-1p" if producer is None else "worker-1"))
        return
    probe = Probe(producer.base_url, bench.redis_url(PRODUCT_DB), keys.source_raw)

    # Create the probe series first: first-sight series creation is not what we time.
    warm = ProbeStats()
    asyncio.run(probe.run(PROBE_SOURCES * 2, 0.5, warm))
    if not warm.latencies_ms:
        fig.fail(f"probe events never reached {keys.source_raw(PROBE_METRIC, 'probe-0')}")
        return

    client = bench.client(PRODUCT_DB)
    for rep in range(cfg.repetitions):
        log(f"scenario 5 end to end: repetition {rep + 1}/{cfg.repetitions}")
        cpu_before = producer.cpu_seconds() + worker.cpu_seconds()
        own_before = own_cpu_seconds()
        started = time.monotonic()
        wrk_result, stats = asyncio.run(_rep(bench, producer, probe))
        server_cpu = (
            100.0
            * (producer.cpu_seconds() + worker.cpu_seconds() - cpu_before)
            / (time.monotonic() - started)
        )
        probe_cpu = 100.0 * (own_cpu_seconds() - own_before) / (time.monotonic() - started)
        fig.extra.setdefault("probe_cpu_percent", []).append(probe_cpu)
        p50, p99 = stats.percentile(50), stats.percentile(99)
        offered = wrk_result.ok_per_s if wrk_result else None
        fig.add(
            p99,
            p50_ms=p50,
            p99_ms=p99,
            gen_cpu=wrk_result.cpu_percent if wrk_result else None,
            server_cpu=server_cpu,
        )
        fig.extra.setdefault("achieved_events_per_s", []).append(offered)
        fig.extra.setdefault("probes", []).append(len(stats.latencies_ms))
        fig.extra.setdefault("probe_timeouts", []).append(stats.timeouts)
        fig.extra.setdefault("http_p99_ms", []).append(wrk_result.p99_ms if wrk_result else None)
        if stats.timeouts or stats.rejected:
            fig.fail(f"{stats.timeouts} probe timeouts, {stats.rejected} probes rejected")
        if wrk_result and (wrk_result.non_2xx or wrk_result.socket_errors):
            fig.fail(
                f"load: {wrk_result.non_2xx} non-2xx, {wrk_result.socket_errors} socket errors"
            )
        log(
            f"  probe p50 {p50 if p50 is None else round(p50, 1)} ms, p99 "
            f"{p99 if p99 is None else round(p99, 1)} ms over {len(stats.latencies_ms)} probes; "
            f"offered {offered or 0:,.0f} events/s, producer+worker CPU {server_cpu:.0f}%, "
            f"probe CPU {probe_cpu:.0f}%"
        )
        if wait_drained(client, [worker], 120.0, 0) is None:
            fig.fail("backlog did not drain after the load")
        if rep == 0:
            bench.mark("producer-1p", "warm:5")
            bench.mark("worker-1", "warm:5")
    bench.mark("producer-1p", "end")
    bench.mark("worker-1", "end")
