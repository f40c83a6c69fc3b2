"""`make soak`: the whole pipeline for an hour at half its sustained capacity, checked for growth.

    python -m bench.soak [--duration 3600] [--rate N] [--single-rate N] [--kill-every 600]

On the product's default settings (8 stream shards, INGEST_MAX_BACKLOG, retention), an embedded
Redis, one producer and two workers: wrk offers gateway batches of 100 (``occurredAt`` left to
the server) plus single events, both paced (``wrk/paced_batch.lua``, 20 metrics x 100
sources); two dashboards poll what the dashboard polls; one reader loops range queries; an
end-to-end probe times POST -> TS.GET. Every ``--kill-every`` seconds the *victim* worker is
SIGKILLed and restarted under a new consumer name (as ``<hostname>-<pid>`` would be); the
*survivor* lives the whole run, so its RSS is one unbroken series.

Every ``--sample-every`` seconds: producer, worker and Redis RSS, Redis ``used_memory`` and the
part of it the time series hold (MEMORY USAGE of every series), backlog (lag + pending over
the shards), the HTTP p99 of the batches and of the single events (wrk runs in chunks of one
sample period, so each sample has its own), the probe's e2e p99, the readers' calls. After
the load, everything accepted must be stored. Written to ``bench/results/<date>-soak.json``,
``.md`` and ``.png``.

Verdict (:func:`verdict`): a Theil-Sen slope (the median of pairwise slopes: the backlog spikes
after each kill do not move it) over the second half of the run, times that half's length, is
each series' growth. RSS, the backlog and p99 must not grow; Redis memory may grow by what the
series hold while the raw retention (INGEST_RETENTION_MS, 24 h) has not been reached, and
everything else in it must not grow.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import redis

from bench.config import PRODUCT_DB, RESULTS_DIR, BenchConfig
from bench.context import Bench
from bench.loadgen import LoadGenError, WrkResult, ensure_wrk, log, run_wrk
from bench.results import Results
from bench.scenarios.common import wait_owned
from bench.scenarios.drain import group_state
from bench.scenarios.e2e import Probe, ProbeStats
from bench.scenarios.workers import dead_letters, entries_added

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bench.procs import Server
    from ingest_shared.keys import Keys
    from ingest_shared.settings import Settings

SCRIPT = "paced_batch.lua"  # SIZE 100: gateway batches; SIZE 1: single events, same series
BATCH = 100
# Without a capacity in bench/results/: roughly what the 2-core dev machine sustained.
FALLBACK_BATCH_CAPACITY = 80_000
FALLBACK_SINGLE_CAPACITY = 10_000
LOAD_SHARE = 0.5  # half the sustained capacity ...
SINGLE_SHARE = 0.1  # ... of which this share of the budget goes to single events
CONNECTIONS = 32  # per wrk process (batches, single events)
PROBE_RATE = 5.0
PROBE_TIMEOUT_S = 10.0
# The dashboard's polls (producer/.../static/app.js): every refresh GETs these in parallel.
DASHBOARD_EVERY_S = 2.0
DASHBOARD_PATHS = (
    "/api/ingest/summary",
    "/api/ingest/sources?stale=true",
    "/api/ingest/events/recent?count=20",
    "/api/ingest/dead-letters?count=20",
)
CHARTS_EVERY_S = 10.0
CHARTS_PATH = "/api/ingest/charts?window=1h"
READER_PAUSE_S = 0.25  # a script looping range queries, one at a time
REFUSED = (429, 503)  # a read route shedding load: counted apart, not a failure
READY_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 300.0
SURVIVOR = "soak-worker-survivor"
VICTIM = "soak-worker-victim"
PRODUCER = "soak-producer"
MIB = 1024 * 1024
# Growth limits over the second half of the run (see verdict()).
RSS_LIMIT = 0.05  # of the series' median
RSS_FLOOR = 2 * MIB  # allocator noise
P99_LIMIT = 0.5
P99_FLOOR_MS = 5.0
BACKLOG_LIMIT_S = 1.0  # seconds of offered load


@dataclass(frozen=True, slots=True)
class SoakConfig:
    """What shapes one soak; rates None: derived from the newest capacity (:func:`rates`)."""

    duration_s: float = 3600.0
    rate: int | None = None  # events/s in gateway batches of 100
    single_rate: int | None = None  # events/s as single events
    kill_every_s: float = 600.0
    sample_every_s: float = 10.0
    # The product's INGEST_CLAIM_IDLE_MS unless set: the CI run shortens it with the kills,
    # or a dead consumer's entries would wait a minute past the end of a one-minute run.
    claim_idle_ms: int | None = None
    results_dir: Path | None = RESULTS_DIR  # None: write nothing
    install_wrk: bool = True


@dataclass
class Calls:
    """HTTP calls of one kind since the last :meth:`take` (appended from the client thread)."""

    latencies_ms: list[float] = field(default_factory=list)
    refused: int = 0
    failed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, status: int | None, ms: float) -> None:
        with self._lock:
            if status is not None and 200 <= status < 300:
                self.latencies_ms.append(ms)
            elif status in REFUSED:
                self.refused += 1
            else:
                self.failed += 1

    def take(self) -> tuple[list[float], int, int]:
        with self._lock:
            taken = (self.latencies_ms, self.refused, self.failed)
            self.latencies_ms, self.refused, self.failed = [], 0, 0
        return taken


@dataclass
class Sample:
    """One reading, at ``t`` seconds since the load started (the plot's and verdict's data)."""

    t: float
    producer_rss: int
    survivor_rss: int
    victim_rss: int
    redis_rss: int
    used_memory: int
    series_bytes: int
    series: int
    backlog: int
    pending: int
    added: int  # stream entries ever added: events accepted
    dead_letters: int
    accepted_per_s: float
    non_2xx: int
    batch_p99_ms: float | None
    single_p99_ms: float | None
    e2e_p99_ms: float | None
    probe_timeouts: int
    dashboard_calls: int
    dashboard_p99_ms: float | None
    reader_calls: int
    reader_p99_ms: float | None
    read_refused: int
    read_failed: int


@dataclass(frozen=True, slots=True)
class Growth:
    """One series' verdict: ``growth`` (its unit) over the fitted window, and why it is ok."""

    series: str
    growth: float
    limit: float
    grows: bool
    why: str


# --- the verdict ---------------------------------------------------------------------------


def theil_sen(ts: Sequence[float], ys: Sequence[float]) -> float:
    """The median of pairwise slopes: a trend that a few spikes (a kill's backlog) ignore."""
    slopes = [
        (ys[j] - ys[i]) / (ts[j] - ts[i])
        for i in range(len(ts))
        for j in range(i + 1, len(ts))
        if ts[j] > ts[i]
    ]
    return statistics.median(slopes) if slopes else 0.0


def second_half(ts: Sequence[float], ys: Sequence[float | None]) -> tuple[list[float], list[float]]:
    """The points of the second half of the run (None values dropped)."""
    if not ts:
        return [], []
    middle = (ts[0] + ts[-1]) / 2
    kept = [(t, y) for t, y in zip(ts, ys, strict=True) if t >= middle and y is not None]
    return [t for t, _ in kept], [y for _, y in kept]


def growth_of(ts: Sequence[float], ys: Sequence[float | None]) -> tuple[float, float]:
    """(fitted growth over the second half, median there); (0, 0) with under 3 points."""
    window_t, window_y = second_half(ts, ys)
    if len(window_t) < 3:
        return 0.0, 0.0
    return theil_sen(window_t, window_y) * (window_t[-1] - window_t[0]), statistics.median(window_y)


def check(
    name: str,
    ts: Sequence[float],
    ys: Sequence[float | None],
    *,
    limit: float,
    floor: float,
    unit: str,
    allowed: float = 0.0,
    allowed_why: str = "",
) -> Growth:
    """Grows when the growth exceeds ``allowed`` + max(``floor``, ``limit`` x the median)."""
    growth, middle = growth_of(ts, ys)
    bound = allowed + max(floor, limit * abs(middle))
    grows = growth > bound
    shown = _amount(growth, unit)
    if grows:
        why = f"GROWS {shown} over the second half (limit {_amount(bound, unit)})"
    elif growth > max(floor, limit * abs(middle)):
        why = f"grows {shown}, as expected: {allowed_why}"
    else:
        why = f"flat ({shown} over the second half, limit {_amount(bound, unit)})"
    return Growth(name, growth, bound, grows, why)


def _amount(value: float, unit: str) -> str:
    if unit == "bytes":
        return f"{value / MIB:+,.1f} MiB"
    return f"{value:+,.1f} {unit}"


def verdict(samples: Sequence[Sample], offered_per_s: float, retention_s: float) -> list[Growth]:
    """Each series' growth over the second half of ``samples`` (see the module docstring)."""
    ts = [s.t for s in samples]

    def series(attr: str) -> list[float | None]:
        return [getattr(s, attr) for s in samples]

    out = [
        check(label, ts, series(attr), limit=RSS_LIMIT, floor=RSS_FLOOR, unit="bytes")
        for attr, label in (
            ("producer_rss", "producer RSS"),
            ("survivor_rss", "worker RSS (the survivor, never killed)"),
        )
    ]
    # Redis may grow by what the series hold until the first samples leave the retention.
    held, _ = growth_of(ts, series("series_bytes"))
    within = not ts or ts[-1] < retention_s
    series_why = (
        f"the time series grew {_amount(held, 'bytes')} and the raw retention "
        f"({retention_s / 3600:g} h) is not reached yet: they grow until it is"
        if within
        else "retention reached: the series should be flat"
    )
    series_allowed = max(0.0, held) if within else 0.0
    other = [s.used_memory - s.series_bytes for s in samples]
    out += [
        check("Redis used_memory", ts, series("used_memory"), limit=RSS_LIMIT, floor=RSS_FLOOR,
              unit="bytes", allowed=series_allowed, allowed_why=series_why),
        check("Redis used_memory outside the series (streams, keys, buffers)", ts, list(other),
              limit=RSS_LIMIT, floor=RSS_FLOOR, unit="bytes"),
        check("Redis RSS", ts, series("redis_rss"), limit=RSS_LIMIT, floor=RSS_FLOOR,
              unit="bytes", allowed=series_allowed, allowed_why=series_why),
        check("backlog (lag + pending)", ts, series("backlog"), limit=0.0,
              floor=BACKLOG_LIMIT_S * offered_per_s, unit="events"),
    ]  # fmt: skip
    backlog, outside = out[-1], out[-3]
    if backlog.grows and outside.grows:  # the waiting entries are in the streams
        per_entry = outside.growth / backlog.growth if backlog.growth else 0.0
        out[-3] = replace(
            outside, why=f"{outside.why}: the streams hold the growing backlog "
            f"(~{per_entry:,.0f} bytes per waiting event)"
        )  # fmt: skip
    out += [
        check(label, ts, series(attr), limit=P99_LIMIT, floor=P99_FLOOR_MS, unit="ms")
        for attr, label in (
            ("batch_p99_ms", "ingest p99, batches of 100 (HTTP)"),
            ("single_p99_ms", "ingest p99, single events (HTTP)"),
        )
    ]
    return out


# --- rates ---------------------------------------------------------------------------------


def newest_capacity(results_dir: Path) -> tuple[float, float, str]:
    """(batch, single-event) sustained capacity in events/s from the newest full bench result
    that has scenario 8, and where it came from; the fallbacks if there is none."""
    for path in sorted(results_dir.glob("*.json"), reverse=True):
        if not path.stem[:10].replace("-", "").isdigit() or path.stem != path.stem[:10]:
            continue  # <date>.json only: not -quick, -soak or -cluster
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            capacity = json.loads(path.read_text())["data"]["capacity"]
            batch = [r["sustained"] for r in capacity.values() if r["ramp"]["size"] > 1]
            batch = [b for b in batch if b]
            single = capacity.get("single.1w", {}).get("sustained")
            if batch and single:
                return float(max(batch)), float(single), f"bench/results/{path.name}"
    return FALLBACK_BATCH_CAPACITY, FALLBACK_SINGLE_CAPACITY, "fallback (no capacity measured)"


def rates(config: SoakConfig, results_dir: Path = RESULTS_DIR) -> tuple[int, int, str]:
    """(batch events/s, single events/s, how they were chosen): half the sustained capacity,
    90% of that budget in batches and 10% in single events, unless given."""
    batch_capacity, single_capacity, origin = newest_capacity(results_dir)
    batch = config.rate
    if batch is None:
        batch = round(LOAD_SHARE * (1 - SINGLE_SHARE) * batch_capacity / BATCH) * BATCH
    single = config.single_rate
    if single is None:
        single = round(LOAD_SHARE * SINGLE_SHARE * single_capacity)
    how = (
        f"capacity {batch_capacity:,.0f} events/s in batches, {single_capacity:,.0f} single "
        f"({origin}); offered: {LOAD_SHARE:.0%} of it, {1 - SINGLE_SHARE:.0%} of that budget "
        f"in batches, {SINGLE_SHARE:.0%} in single events"
        + (" (overridden on the command line)" if config.rate or config.single_rate else "")
    )
    return batch, single, how


# --- the readers (one asyncio loop in a thread) --------------------------------------------


class Readers:
    """Two dashboards, one range reader and the e2e probe, until :meth:`stop`."""

    def __init__(self, base_url: str, redis_url: str, keys: Keys, dashboards: int = 2) -> None:
        self.base_url = base_url
        self.dashboard = Calls()
        self.reader = Calls()
        self.probe_stats = ProbeStats(timeout_s=PROBE_TIMEOUT_S)
        self._probe = Probe(base_url, redis_url, keys.source_raw, timeout_s=PROBE_TIMEOUT_S)
        self._dashboards = dashboards
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="soak-readers", daemon=True)
        self._seen = (0, 0)  # probe latencies and timeouts already sampled

    def __enter__(self) -> Readers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(PROBE_TIMEOUT_S + 15)

    def take_probe(self) -> tuple[list[float], int]:
        """Probe latencies and timeouts since the last call."""
        stats, (seen, timeouts) = self.probe_stats, self._seen
        latencies = stats.latencies_ms[seen:]
        self._seen = (seen + len(latencies), stats.timeouts)
        return latencies, stats.timeouts - timeouts

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30.0) as http:
            tasks = [asyncio.create_task(self._dash(http, i)) for i in range(self._dashboards)]
            tasks += [asyncio.create_task(self._read(http)), asyncio.create_task(self._probes())]
            await asyncio.gather(*tasks)

    async def _get(self, http: httpx.AsyncClient, path: str, calls: Calls) -> None:
        started = time.perf_counter()
        try:
            status: int | None = (await http.get(path)).status_code
        except httpx.HTTPError:
            status = None
        calls.record(status, 1000 * (time.perf_counter() - started))

    async def _dash(self, http: httpx.AsyncClient, index: int) -> None:
        await asyncio.sleep(index * DASHBOARD_EVERY_S / max(1, self._dashboards))  # staggered
        last_charts = -CHARTS_EVERY_S
        while not self._stop.is_set():
            paths = list(DASHBOARD_PATHS)
            if time.monotonic() - last_charts >= CHARTS_EVERY_S:
                paths.append(CHARTS_PATH)
                last_charts = time.monotonic()
            # As app.js: the calls of a refresh in parallel, the next one 2 s after it ends.
            await asyncio.gather(*(self._get(http, p, self.dashboard) for p in paths))
            await asyncio.sleep(DASHBOARD_EVERY_S)

    async def _read(self, http: httpx.AsyncClient) -> None:
        rng = random.Random(7)
        while not self._stop.is_set():
            metric, source = f"metric-{rng.randrange(20)}", f"sensor-{rng.randrange(100)}"
            now = time.time_ns() // 1_000_000
            base = f"/api/ingest/metrics/{metric}/range"
            path = rng.choice(
                (
                    f"{base}?source={source}&from={now - 60_000}",  # raw, the last minute
                    f"{base}?source={source}&agg=avg&bucketMs=60000&from={now - 3_600_000}",
                    f"{base}?agg=avg&bucketMs=10000&from={now - 900_000}",  # the fleet
                )
            )
            await self._get(http, path, self.reader)
            await asyncio.sleep(READER_PAUSE_S)

    async def _probes(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(httpx.HTTPError, redis.RedisError):
                await self._probe.run(PROBE_RATE, 5.0, self.probe_stats)


# --- the run -------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything one soak found; ``to_json`` is what bench/results/<date>-soak.json holds."""

    config: dict[str, Any]
    meta: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)
    growth: list[Growth] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return not self.problems

    @property
    def grows(self) -> list[Growth]:
        return [g for g in self.growth if g.grows]

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "config": self.config,
            "final": self.final,
            "problems": self.problems,
            "kills": self.kills,
            "verdict": [asdict(g) for g in self.growth],
            "samples": [asdict(s) for s in self.samples],
        }


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _series_bytes(client: redis.Redis, prefix: str) -> tuple[int, int]:
    """(bytes the time series hold by MEMORY USAGE, how many series)."""
    names = list(client.scan_iter(match=f"{prefix}:*", count=1_000, _type="TSDB-TYPE"))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.memory_usage(name, samples=0)
    return sum(int(n or 0) for n in pipe.execute()), len(names)


def _backlog(client: redis.Redis, keys: Keys, group: str) -> tuple[int, int]:
    """(lag + pending, pending) summed over the shards."""
    backlog = pending = 0
    for shard in keys.shards:
        state = group_state(client, shard.stream, group)
        if state is not None:
            backlog += state[0] + state[1]
            pending += state[0]
    return backlog, pending


class Soak:
    """One run: the processes, the load in chunks of one sample period, the kills, samples."""

    def __init__(self, bench: Bench, settings: Settings, config: SoakConfig) -> None:
        self.bench, self.settings, self.config = bench, settings, config
        self.keys = settings.keys
        self.client = bench.client(PRODUCT_DB)
        self.victims = 0
        self.started = time.monotonic()

    def _worker_env(self) -> dict[str, str]:
        claim = self.config.claim_idle_ms
        return {} if claim is None else {"INGEST_CLAIM_IDLE_MS": str(claim)}

    def start(self) -> str | None:
        """Producer and both workers, the workers owning every shard; or why not."""
        env = self._worker_env()
        producer = self.bench.default_producer(PRODUCER, **env)
        survivor = self.bench.default_worker(SURVIVOR, "soak-survivor", **env)
        victim = self._start_victim()
        if producer is None or survivor is None or victim is None:
            return "; ".join(self.bench.unavailable.values()) or "a process did not start"
        consumers = ["soak-survivor", f"soak-victim-{self.victims}"]
        return wait_owned(self.client, self.keys, consumers, [survivor, victim], READY_TIMEOUT_S)

    def _start_victim(self) -> Server | None:
        self.victims += 1
        return self.bench.default_worker(
            VICTIM, f"soak-victim-{self.victims}", **self._worker_env()
        )

    def kill_victim(self) -> dict[str, Any]:
        """SIGKILL the victim's process group and start it again under a new consumer name."""
        server = self.bench.servers[VICTIM]
        at = time.monotonic() - self.started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        if server.process is not None:
            server.process.wait(10)
        self.bench.stop(VICTIM)
        backlog, pending = _backlog(self.client, self.keys, self.settings.consumer_group)
        restarted = self._start_victim() is not None
        log(f"  t={at:.0f}s: worker killed (backlog {backlog:,}, pending {pending:,}), restarted")
        return {"t": round(at, 1), "backlog": backlog, "pending": pending, "restarted": restarted}

    def _load(self, rate: int, size: int, seconds: float) -> WrkResult | str:
        """One chunk of paced load; what went wrong instead of a result."""
        assert self.bench.wrk is not None
        producer = self.bench.servers[PRODUCER]
        try:
            return run_wrk(
                self.bench.wrk, producer.base_url, SCRIPT, duration_s=seconds,
                connections=CONNECTIONS, script_args=[str(rate), str(size)],
            )  # fmt: skip
        except (LoadGenError, OSError) as exc:
            return str(exc)[:200]

    def sample(
        self, readers: Readers, chunk: Sequence[WrkResult | str | None], seconds: float
    ) -> Sample:
        """One reading after a chunk of load (``chunk``: the batch and single-event runs)."""
        servers = self.bench.servers
        memory = self.client.info("memory")
        series_bytes, series = _series_bytes(self.client, self.settings.series_prefix)
        backlog, pending = _backlog(self.client, self.keys, self.settings.consumer_group)
        done = [r for r in chunk if isinstance(r, WrkResult)]
        accepted = sum(
            r.ok_requests * n for r, n in zip(chunk, (BATCH, 1), strict=True)
            if isinstance(r, WrkResult)
        )  # fmt: skip
        failed_runs = sum(isinstance(r, str) for r in chunk)  # wrk itself failed
        dashboard, dash_refused, dash_failed = readers.dashboard.take()
        reader, read_refused, read_failed = readers.reader.take()
        probe, probe_timeouts = readers.take_probe()

        def rss(name: str) -> int:
            server = servers.get(name)
            return server.rss_bytes() if server is not None else 0

        def p99(index: int) -> float | None:
            result = chunk[index]
            return result.p99_ms if isinstance(result, WrkResult) else None

        return Sample(
            t=round(time.monotonic() - self.started, 1),
            producer_rss=rss(PRODUCER),
            survivor_rss=rss(SURVIVOR),
            victim_rss=rss(VICTIM),
            redis_rss=int(memory["used_memory_rss"]),
            used_memory=int(memory["used_memory"]),
            series_bytes=series_bytes,
            series=series,
            backlog=backlog,
            pending=pending,
            added=entries_added(self.client, self.keys),
            dead_letters=dead_letters(self.client, self.keys),
            accepted_per_s=round(accepted / seconds, 1) if seconds > 0 else 0.0,
            non_2xx=sum(r.non_2xx + r.socket_errors for r in done) + failed_runs,
            batch_p99_ms=p99(0),
            single_p99_ms=p99(1),
            e2e_p99_ms=_p99(probe),
            probe_timeouts=probe_timeouts,
            dashboard_calls=len(dashboard),
            dashboard_p99_ms=_p99(dashboard),
            reader_calls=len(reader),
            reader_p99_ms=_p99(reader),
            read_refused=dash_refused + read_refused,
            read_failed=dash_failed + read_failed,
        )

    def run_load(self, report: Report, batch_rate: int, single_rate: int) -> None:
        """The load in chunks of one sample period, a sample after each, kills on time."""
        cfg = self.config
        chunk_s = max(1.0, round(cfg.sample_every_s))  # wrk takes whole seconds
        self.started = time.monotonic()
        next_kill = cfg.kill_every_s
        producer = self.bench.servers[PRODUCER]
        readers = Readers(producer.base_url, self.bench.redis_url(PRODUCT_DB), self.keys)
        with readers:
            while (elapsed := time.monotonic() - self.started) < cfg.duration_s - chunk_s / 2:
                chunk: list[WrkResult | str | None] = [None, None]  # None: not offered
                threads = [
                    threading.Thread(target=self._chunk, args=(chunk, i, rate, size, chunk_s))
                    for i, (rate, size) in enumerate(((batch_rate, BATCH), (single_rate, 1)))
                    if rate > 0
                ]
                for thread in threads:
                    thread.start()
                # Mid-chunk, not between two chunks; none at the very end (nothing after it
                # would show the recovery).
                if next_kill < cfg.duration_s and elapsed + chunk_s > next_kill:
                    time.sleep(max(0.0, next_kill - elapsed))
                    report.kills.append(self.kill_victim())
                    next_kill += cfg.kill_every_s
                for thread in threads:
                    thread.join()
                seconds = time.monotonic() - self.started - elapsed
                report.samples.append(self.sample(readers, chunk, seconds))
                _progress(report.samples[-1])

    def _chunk(
        self, out: list[WrkResult | str | None], index: int, rate: int, size: int, s: float
    ) -> None:
        out[index] = self._load(rate, size, s)

    def drain(self, report: Report, timeout_s: float) -> None:
        """Wait until everything accepted is stored; record the final state and problems."""
        deadline = time.monotonic() + timeout_s
        group = self.settings.consumer_group
        while time.monotonic() < deadline:
            backlog, pending = _backlog(self.client, self.keys, group)
            if backlog == 0:
                break
            time.sleep(0.5)
        backlog, pending = _backlog(self.client, self.keys, group)
        added = entries_added(self.client, self.keys)
        report.final = {
            "accepted": added,
            "stored": added - backlog,
            "backlog": backlog,
            "pending": pending,
            "dead_letters": dead_letters(self.client, self.keys),
            "drained_in_s": round(timeout_s - max(0.0, deadline - time.monotonic()), 1),
        }
        if backlog or pending:
            report.problems.append(
                f"not stored within {timeout_s:.0f} s of the load's end: backlog {backlog:,}, "
                f"pending {pending:,}"
            )
        if report.final["dead_letters"]:
            report.problems.append(f"{report.final['dead_letters']} events dead-lettered")
        if not report.samples:
            report.problems.append("no sample was taken")
        for name in (PRODUCER, SURVIVOR):
            server = self.bench.servers.get(name)
            if server is None or not server.alive():
                report.problems.append(f"{name} is not running at the end")


def _progress(s: Sample) -> None:
    log(
        f"  t={s.t:>6.0f}s accepted {s.accepted_per_s:,.0f}/s, backlog {s.backlog:,}, RSS MiB "
        f"producer {s.producer_rss / MIB:.0f} / workers {s.survivor_rss / MIB:.0f} + "
        f"{s.victim_rss / MIB:.0f} / Redis {s.redis_rss / MIB:.0f}, used_memory "
        f"{s.used_memory / MIB:.0f} MiB (series {s.series_bytes / MIB:.0f}), p99 ms batch "
        f"{_ms(s.batch_p99_ms)} single {_ms(s.single_p99_ms)} e2e {_ms(s.e2e_p99_ms)}"
        + (f", non-2xx {s.non_2xx}" if s.non_2xx else "")
        + (f", reads failed {s.read_failed}" if s.read_failed else "")
    )


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def run_soak(config: SoakConfig, workdir: Path | None = None) -> Report:
    """Run one soak on a fresh embedded Redis; the report says whether it completed."""
    from ingest_devtools.localredis import LocalRedis
    from ingest_shared.settings import load_settings

    settings = load_settings({})  # the product's defaults, as its processes will parse them
    batch_rate, single_rate, how = rates(config)
    report = Report(
        config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        meta={
            "date": dt.datetime.now(dt.UTC).date().isoformat(),
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "batch_rate": batch_rate,
            "single_rate": single_rate,
            "rates": how,
            "workers": 2,
            "stream_shards": settings.stream_shards,
            "retention_ms": settings.retention_ms,
            "rollups": [r.name for r in settings.keys.rollups],
            "machine": f"{os.cpu_count()} cores",
        },
    )
    wrk = ensure_wrk(config.install_wrk)
    if wrk is None:
        report.problems.append("wrk is not installed")
        return report
    log(f"soak: {batch_rate:,} events/s in batches + {single_rate:,}/s single ({how})")
    with tempfile.TemporaryDirectory(prefix="soak-", dir=workdir) as tmp:
        server = LocalRedis(data_dir=Path(tmp) / "redis", appendonly=False)
        with server:
            bench = Bench(BenchConfig(), server, Path(tmp), Results(), wrk)
            soak = Soak(bench, settings, config)
            try:
                why = soak.start()
                if why is not None:
                    report.problems.append(f"the pipeline did not start: {why}")
                    return report
                soak.run_load(report, batch_rate, single_rate)
                log("soak: load over, waiting for the backlog to drain")
                soak.drain(report, DRAIN_TIMEOUT_S + (config.claim_idle_ms or 60_000) / 1000)
            finally:
                bench.close()
    report.growth = verdict(report.samples, batch_rate + single_rate, settings.retention_ms / 1000)
    report.meta["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return report


# --- the report ----------------------------------------------------------------------------


def render(report: Report) -> str:
    """The Markdown report: settings, the verdict, the kills, one row per minute of samples."""
    meta, final = report.meta, report.final
    lines = [
        f"# Soak, {meta['date']}",
        "",
        f"{report.config['duration_s']:g} s on the default settings ({meta['stream_shards']} "
        f"shards, raw retention {meta['retention_ms'] / 3_600_000:g} h, rollups "
        f"{', '.join(meta['rollups'])}), 1 producer, 2 workers (one killed every "
        f"{report.config['kill_every_s']:g} s), 2 dashboards, 1 range reader, an e2e probe; "
        f"{meta['batch_rate']:,} events/s in batches of 100 + {meta['single_rate']:,} single "
        f"events/s. Rates: {meta['rates']}.",
        "",
        "## Verdict",
        "",
    ]
    if not report.growth:
        lines.append("No verdict: " + "; ".join(report.problems))
    grows = report.grows
    lines.append(
        "Nothing grows beyond what the retention implies."
        if report.growth and not grows
        else "Grows: " + ", ".join(g.series for g in grows) + "."
    )
    lines += ["", "| Series | Growth over the second half |", "|---|---|"]
    lines += [f"| {g.series} | {g.why} |" for g in report.growth]
    lines += _memory_lines(report)
    lines += [
        "",
        "## End of the run",
        "",
        f"Accepted {final.get('accepted', 0):,} events, stored {final.get('stored', 0):,}; "
        f"backlog {final.get('backlog', 'n/a')}, pending {final.get('pending', 'n/a')}, dead "
        f"letters {final.get('dead_letters', 'n/a')}; drained {final.get('drained_in_s', 'n/a')}"
        " s after the load. " + ("Completed." if report.completed else
                                 "Problems: " + "; ".join(report.problems)),
        "",
        "Kills (t, backlog and pending then): "
        + (", ".join(f"{k['t']:g} s ({k['backlog']:,} / {k['pending']:,})" for k in report.kills)
           or "none"),
        "",
        "## Samples (one per minute; all in the JSON)",
        "",
        "| t s | accepted/s | backlog | RSS MiB producer / survivor / victim / Redis "
        "| used_memory MiB (series) | p99 ms batch / single / e2e | reads (failed) |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    step = max(1, round(60 / float(report.config["sample_every_s"])))
    for s in report.samples[::step]:
        lines.append(
            f"| {s.t:.0f} | {s.accepted_per_s:,.0f} | {s.backlog:,} | {s.producer_rss / MIB:.0f}"
            f" / {s.survivor_rss / MIB:.0f} / {s.victim_rss / MIB:.0f} / {s.redis_rss / MIB:.0f}"
            f" | {s.used_memory / MIB:.0f} ({s.series_bytes / MIB:.0f}) | "
            f"{_ms(s.batch_p99_ms)} / {_ms(s.single_p99_ms)} / {_ms(s.e2e_p99_ms)} "
            f"| {s.dashboard_calls + s.reader_calls} ({s.read_failed}) |"
        )
    return "\n".join(lines) + "\n"


def _memory_lines(report: Report) -> list[str]:
    """What the retention implies: bytes per stored event, projected to the full retention."""
    samples = report.samples
    if len(samples) < 2:
        return []
    first, last = samples[len(samples) // 2], samples[-1]
    stored = (last.added - last.backlog) - (first.added - first.backlog)
    if stored <= 0:
        return []
    per_event = (last.series_bytes - first.series_bytes) / stored
    retention_s = report.meta["retention_ms"] / 1000
    rate = report.meta["batch_rate"] + report.meta["single_rate"]
    projected = per_event * rate * retention_s + last.series_bytes
    report.meta["series_bytes_per_event"] = round(per_event, 2)
    report.meta["projected_series_bytes_at_retention"] = round(projected)
    return [
        "",
        f"Series memory grew {per_event:.1f} bytes per stored event over the second half (raw "
        "device series + per-metric partial + rollups). At this rate the raw retention "
        f"({retention_s / 3600:g} h) holds {rate * retention_s:,.0f} events: about "
        f"{projected / 2**30:,.1f} GiB of series before Redis memory levels off (see "
        "docs/operating.md, *Sizing Redis*).",
    ]


def write(report: Report, results_dir: Path) -> list[Path]:
    """``<date>-soak.json``, ``.md`` and ``.png`` in ``results_dir``."""
    from bench.plot import plot_soak

    results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_dir / f"{report.meta['date']}-soak"
    markdown = render(report)  # first: it adds the projection to meta
    written = []
    plot = plot_soak(report.to_json(), stem.with_suffix(".png"), f"Soak, {report.meta['date']}")
    if plot is not None:
        markdown += f"\n![soak]({plot.name})\n"
        written.append(plot)
    for path, text in (
        (stem.with_suffix(".json"), json.dumps(report.to_json(), indent=2) + "\n"),
        (stem.with_suffix(".md"), markdown),
    ):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        written.append(path)
    return written


def parse_args(argv: Sequence[str] | None = None) -> SoakConfig:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds (default 3600)")
    parser.add_argument("--rate", type=int, help="events/s in batches of 100 (default: see above)")
    parser.add_argument("--single-rate", type=int, help="single events/s (default: see above)")
    parser.add_argument("--kill-every", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--claim-idle-ms", type=int, help="INGEST_CLAIM_IDLE_MS (default: unset)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    args = parser.parse_args(argv)
    return SoakConfig(
        duration_s=args.duration,
        rate=args.rate,
        single_rate=args.single_rate,
        kill_every_s=args.kill_every,
        sample_every_s=args.sample_every,
        claim_idle_ms=args.claim_idle_ms,
        results_dir=None if args.no_write else args.results_dir,
        install_wrk=not args.no_install,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    report = run_soak(config)
    if config.results_dir is not None:
        for path in write(report, config.results_dir):
            log(f"wrote {path}")
    print(render(report), flush=True)
    return 0 if report.completed and not report.grows else 1


if __name__ == "__main__":
    sys.exit(main())
