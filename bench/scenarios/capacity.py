"""Scenario 8: sustained capacity of the whole pipeline on this machine (issue 11).

The producer, the worker(s) and Redis run together; wrk (its own process, one thread) offers
gateway-shaped traffic on a fixed timetable (``wrk/paced_batch.lua``: batches of 100 = 5
sources x 20 metrics, ``occurredAt`` left to the server; or single events over the same
series) and steps the offered rate up. Per step: offered, accepted (2xx events/s), drained
(the group's entries-read minus pending, per second), the backlog (lag + pending) at the start
and end and its slope, end-to-end p50/p99 (a probe posts ~10 events/s and times POST 200 ->
TS.GET, as scenario 5 does), failed requests, and the CPU of every process. A step passes when
the producer took what was offered (>= 95%), the backlog did not grow (slope <= 1% of the
offered rate and end <= start + 1 s of offered events), p99 < 1 s and no request failed. The
ramp stops at the first failing step; the sustained capacity is the highest step passed
before it. Ramps: batches with 1 worker, then 2 workers; single events with 1 worker; the
tutorial baseline (its producer under the same wrk script, at 32 connections: past ~100
concurrent requests its redis-py pool refuses with MaxConnectionsError; its process route
called with count=1000 in a loop by ``bench/baseline_loop.py``, in its own process).

The producer runs with the product's INGEST_MAX_BACKLOG (1,000,000), so a ramp past its limit
ends in 503s, as a real one would. In a full run, one extra step at the first failing rate
is profiled (py-spy on the producer and the worker) for where each core goes at the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import psutil  # type: ignore[import-untyped,unused-ignore]
import redis

from bench.config import (
    BASELINE_DB,
    CONSUMER_GROUP,
    DEAD_LETTER_KEY,
    METRICS_KEY,
    PRODUCT_DB,
    REPO_ROOT,
    SERIES_PREFIX,
    STREAM_KEY,
)
from bench.loadgen import LoadGenError, WrkResult, log, run_wrk
from bench.procs import base_env, own_cpu_seconds
from bench.profile import profiled
from bench.scenarios.drain import (
    command_stats,
    start_worker,
    stats_delta,
    wait_one_stream_owned,
)
from bench.scenarios.e2e import PROBE_SOURCES, Probe, ProbeStats

if TYPE_CHECKING:
    from collections.abc import Iterator

    from bench.context import Bench
    from bench.procs import Server

SCRIPT = "paced_batch.lua"
PROBE_RATE = 10.0
PROBE_POLL_S = 0.002
PROBE_TIMEOUT_S = 10.0
MONITOR_INTERVAL_S = 1.0
P99_LIMIT_MS = 1_000.0
ACCEPTED_MIN_SHARE = 0.95
SLOPE_MAX_SHARE = 0.01
WARMUP_S = 3.0
DRAIN_AFTER_RAMP_S = 300.0
PRODUCT_MAX_BACKLOG = 1_000_000  # the product's default INGEST_MAX_BACKLOG
BATCH_TARGET = 100_000.0
BASELINE_RATIO_TARGET = 20.0
BASELINE_SERIES = "telemetry:series:raw:{metric}"  # the tutorial's per-metric key
BEST_BATCH = "capacity.batch.best"
BASELINE_KEY = "capacity.baseline"


@dataclass(frozen=True, slots=True)
class Ramp:
    """One load shape and set-up, stepped through ``rates``."""

    key: str
    label: str
    size: int  # events per request
    workers: int
    rates: tuple[int, ...]
    connections: int
    baseline: bool = False


@dataclass
class Step:
    offered: int
    seconds: float
    accepted: float
    drained: float
    backlog_start: int
    backlog_end: int
    backlog_slope: float
    e2e_p50_ms: float | None
    e2e_p99_ms: float | None
    http_p99_ms: float | None
    probes: int
    non_2xx: int
    socket_errors: int
    cpu_percent: dict[str, float]
    commandstats: dict[str, dict[str, float]]
    errors: dict[str, int] = field(default_factory=dict)  # wrk's error kinds, non-2xx by status
    passed: bool = False
    why: str = ""


@dataclass
class Sample:
    """One monitor reading (the plot's data)."""

    t: float
    offered: int
    added: int
    acked: int
    backlog: int


@dataclass
class RampResult:
    ramp: Ramp
    steps: list[Step] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    sustained: int | None = None
    note: str = ""


def group_counters(client: redis.Redis, stream: str) -> tuple[int, int, int] | None:
    """(entries added to the stream, entries the group acked, backlog = lag + pending)."""
    try:
        info = client.xinfo_stream(stream)
        groups = client.xinfo_groups(stream)
        pending = int(client.xpending(stream, CONSUMER_GROUP)["pending"])
    except redis.ResponseError:
        return None
    found = next((g for g in groups if g["name"] == CONSUMER_GROUP.encode()), None)
    if found is None or found.get("entries-read") is None:
        return None
    added = int(info["entries-added"])
    read = int(found["entries-read"])
    lag = found.get("lag")
    lag = added - read if lag is None else int(lag)
    return added, read - pending, lag + pending


class Monitor:
    """A thread reading the group's counters every second, tagged with the offered rate."""

    def __init__(self, bench: Bench, db: int) -> None:
        self._client = redis.Redis(
            host="127.0.0.1", port=bench.redis_server.port, db=db, socket_timeout=30
        )
        self.samples: list[Sample] = []
        self.offered = 0
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capacity-monitor", daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(redis.RedisError):
                counters = group_counters(self._client, STREAM_KEY)
                if counters is not None:
                    self.samples.append(
                        Sample(round(time.monotonic() - self._t0, 2), self.offered, *counters)
                    )
            self._stop.wait(MONITOR_INTERVAL_S)


@dataclass
class Pipeline:
    """The processes of one ramp, and how to read their CPU."""

    producer: Server
    workers: list[Server]
    probe: Probe
    db: int
    loop: subprocess.Popen[bytes] | None = None

    def cpu(self, redis_pid: int | None) -> dict[str, float]:
        used = {
            "producer": self.producer.cpu_seconds(),
            "workers": sum(w.cpu_seconds() for w in self.workers),
            "harness": own_cpu_seconds(),
        }
        for name, pid in (("redis", redis_pid), ("loop", self.loop.pid if self.loop else None)):
            if pid is not None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = psutil.Process(pid).cpu_times()
                    used[name] = float(times.user + times.system)
        return used


async def _drive(
    bench: Bench, pipe: Pipeline, ramp: Ramp, rate: int, seconds: float
) -> tuple[WrkResult | None, str, ProbeStats]:
    assert bench.wrk is not None
    load = asyncio.create_task(
        asyncio.to_thread(
            functools.partial(
                run_wrk, bench.wrk, pipe.producer.base_url, SCRIPT, duration_s=seconds,
                connections=ramp.connections, script_args=[str(rate), str(ramp.size)],
            )
        )
    )  # fmt: skip
    stats = ProbeStats(timeout_s=PROBE_TIMEOUT_S)
    await asyncio.sleep(0.5)
    await pipe.probe.run(PROBE_RATE, max(0.5, round(max(1, seconds)) - 1.0), stats)
    try:
        return await load, "", stats
    except (LoadGenError, OSError) as exc:
        return None, str(exc)[:200], stats


def _slope(samples: list[Sample]) -> float:
    """Least-squares slope of the backlog over the samples, events/s."""
    if len(samples) < 3:
        return 0.0
    ts = [s.t for s in samples]
    ys = [float(s.backlog) for s in samples]
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    var = sum((t - mt) ** 2 for t in ts)
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var if var else 0.0


def run_step(
    bench: Bench, pipe: Pipeline, ramp: Ramp, monitor: Monitor, *, rate: int, seconds: float
) -> Step:
    client = bench.client(pipe.db)
    redis_pid = bench.redis_server.pid
    before = group_counters(client, STREAM_KEY) or (0, 0, 0)
    cpu_before = pipe.cpu(redis_pid)
    stats_before = command_stats(client)
    monitor.offered = rate
    first_sample = len(monitor.samples)
    started = time.monotonic()
    result, error, probes = asyncio.run(_drive(bench, pipe, ramp, rate, seconds))
    elapsed = time.monotonic() - started
    after = group_counters(client, STREAM_KEY) or before
    cpu_after = pipe.cpu(redis_pid)
    cpu = {
        name: round(100.0 * (cpu_after[name] - cpu_before.get(name, 0.0)) / elapsed, 1)
        for name in cpu_after
    }
    cpu["wrk"] = round(result.cpu_percent, 1) if result else 0.0
    wrk_s = result.duration_s if result else elapsed
    step = Step(
        offered=rate,
        seconds=round(elapsed, 2),
        accepted=result.ok_requests * ramp.size / wrk_s if result else 0.0,
        drained=(after[1] - before[1]) / elapsed,
        backlog_start=before[2],
        backlog_end=after[2],
        backlog_slope=_slope(monitor.samples[first_sample:]),
        e2e_p50_ms=probes.percentile(50),
        e2e_p99_ms=probes.percentile(99),
        http_p99_ms=result.p99_ms if result else None,
        probes=len(probes.latencies_ms) + probes.timeouts,
        non_2xx=(result.non_2xx if result else 0) + probes.rejected,
        socket_errors=result.socket_errors if result else 0,
        cpu_percent=cpu,
        errors=dict(result.error_kinds) if result else {},
        commandstats=dict(
            list(stats_delta(stats_before, command_stats(client), elapsed).items())[:6]
        ),
    )
    problems = []
    if result is None:
        problems.append(f"wrk failed: {error}")
    if step.accepted < ACCEPTED_MIN_SHARE * rate:
        problems.append(f"accepted {step.accepted:,.0f} < 95% of offered")
    grown = step.backlog_end - step.backlog_start
    if step.backlog_slope > SLOPE_MAX_SHARE * rate or grown > rate:
        problems.append(f"backlog grew ({grown:+,} events, {step.backlog_slope:+,.0f}/s)")
    if step.e2e_p99_ms is None or step.e2e_p99_ms >= P99_LIMIT_MS:
        problems.append(f"e2e p99 {_ms(step.e2e_p99_ms)}")
    if step.non_2xx or step.socket_errors:
        kinds = ", ".join(f"{k} {n}" for k, n in step.errors.items())
        problems.append(
            f"{step.non_2xx} non-2xx, {step.socket_errors} socket errors"
            + (f" ({kinds})" if kinds else "")
            + (f", {probes.rejected} probes rejected" if probes.rejected else "")
        )
    if cpu["wrk"] > 90:
        problems.append(f"wrk at {cpu['wrk']:.0f}% CPU: the load generator may be the limit")
    step.passed = not problems
    step.why = "; ".join(problems)
    log(
        f"  {ramp.key} @ {rate:,}/s: accepted {step.accepted:,.0f}, drained {step.drained:,.0f}, "
        f"backlog {step.backlog_start:,} -> {step.backlog_end:,} ({step.backlog_slope:+,.0f}/s), "
        f"e2e p99 {_ms(step.e2e_p99_ms)}, non-2xx {step.non_2xx}, CPU "
        + " ".join(f"{k} {v:.0f}%" for k, v in cpu.items())
        + (" PASS" if step.passed else f" FAIL: {step.why}")
    )
    return step


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f} ms"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


@contextlib.contextmanager
def _pipeline(bench: Bench, ramp: Ramp) -> Iterator[Pipeline | None]:
    """Start (or reuse) the processes of `ramp`; the baseline's are stopped afterwards."""
    if ramp.baseline:
        with _baseline_pipeline(bench) as pipe:
            yield pipe
        return
    from ingest_shared.keys import Keys

    keys = Keys(STREAM_KEY, DEAD_LETTER_KEY, METRICS_KEY, SERIES_PREFIX)
    producer = bench.producer(1, max_backlog=PRODUCT_MAX_BACKLOG)
    workers = [start_worker(bench, i) for i in range(1, ramp.workers + 1)]
    for i in range(ramp.workers + 1, 4):
        bench.stop(f"worker-{i}")
    live = [w for w in workers if w is not None]
    if len(live) == ramp.workers:
        wait_one_stream_owned(bench, range(1, ramp.workers + 1))
    if producer is None or len(live) < ramp.workers:
        yield None
        return
    probe = Probe(
        producer.base_url, bench.redis_url(PRODUCT_DB), keys.source_raw,
        poll_s=PROBE_POLL_S, timeout_s=PROBE_TIMEOUT_S,
    )  # fmt: skip
    yield Pipeline(producer, live, probe, PRODUCT_DB)


@contextlib.contextmanager
def _baseline_pipeline(bench: Bench) -> Iterator[Pipeline | None]:
    client = bench.client(BASELINE_DB)
    server = bench.baseline()
    if server is None:
        yield None
        return
    # Only what this ramp posts counts: skip whatever the other scenarios left.
    client.xtrim(STREAM_KEY, maxlen=0, approximate=False)
    client.xgroup_setid(STREAM_KEY, CONSUMER_GROUP, "$")
    log_path = bench.workdir / "logs" / "baseline-loop.log"
    with log_path.open("ab") as out:
        loop = subprocess.Popen(
            [sys.executable, "-m", "bench.baseline_loop", server.base_url, "1000"],
            cwd=REPO_ROOT, env=base_env({}), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    probe = Probe(
        server.base_url, bench.redis_url(BASELINE_DB),
        lambda metric, _source: BASELINE_SERIES.format(metric=metric),
        poll_s=PROBE_POLL_S, timeout_s=PROBE_TIMEOUT_S,
    )  # fmt: skip
    try:
        yield Pipeline(server, [], probe, BASELINE_DB, loop)
    finally:
        loop.terminate()
        try:
            loop.wait(10)
        except subprocess.TimeoutExpired:
            loop.kill()
            loop.wait(5)
        bench.stop("baseline")
        client.delete(STREAM_KEY)


def _settle(bench: Bench, pipe: Pipeline, label: str) -> None:
    """Wait for the backlog to drain; drop it (and say so) if it does not in time."""
    client = bench.client(pipe.db)
    counters = group_counters(client, STREAM_KEY)
    if counters is None or counters[2] == 0:
        return
    log(f"  {label}: waiting for {counters[2]:,} events to drain")
    deadline = time.monotonic() + DRAIN_AFTER_RAMP_S
    while time.monotonic() < deadline:
        counters = group_counters(client, STREAM_KEY)
        if counters is None or counters[2] == 0:
            return
        time.sleep(0.2)
    log(f"  {label}: backlog not drained after {DRAIN_AFTER_RAMP_S:.0f} s: dropped")
    bench.results.errors.append(f"capacity {label}: backlog dropped after the ramp")
    client.xtrim(STREAM_KEY, maxlen=0, approximate=False)
    with contextlib.suppress(redis.ResponseError):
        client.xgroup_setid(STREAM_KEY, CONSUMER_GROUP, "$")


def run_ramp(bench: Bench, ramp: Ramp) -> RampResult:
    cfg = bench.config
    out = RampResult(ramp)
    with _pipeline(bench, ramp) as pipe:
        if pipe is None:
            out.note = "processes unavailable: " + "; ".join(bench.unavailable.values())
            return out
        with Monitor(bench, pipe.db) as monitor:
            # Series exist and the probe's are created before anything is measured.
            asyncio.run(pipe.probe.run(PROBE_SOURCES * 2, 0.5, None))
            log(f"scenario 8 {ramp.key}: warm-up step at {ramp.rates[0]:,}/s (not measured)")
            warm_s = min(WARMUP_S, cfg.capacity_step_s)
            run_step(bench, pipe, ramp, monitor, rate=ramp.rates[0], seconds=warm_s)
            _settle(bench, pipe, ramp.key)
            monitor.samples.clear()
            for rate in ramp.rates:
                step = run_step(bench, pipe, ramp, monitor, rate=rate, seconds=cfg.capacity_step_s)
                out.steps.append(step)
                if not step.passed:
                    break
                out.sustained = rate
            monitor.offered = 0
            _settle(bench, pipe, ramp.key)
            out.samples = list(monitor.samples)
            failed = next((s for s in out.steps if not s.passed), None)
            if failed is not None and cfg.capacity_profile_s > 0 and not ramp.baseline:
                _profile_limit(bench, pipe, ramp, monitor, failed.offered)
    return out


def _profile_limit(bench: Bench, pipe: Pipeline, ramp: Ramp, monitor: Monitor, rate: int) -> None:
    """One extra, unmeasured step at the limit with py-spy on the producer and a worker."""
    log(f"scenario 8 {ramp.key}: profiled step at {rate:,}/s (not measured)")
    with (
        profiled(bench, f"capacity-{ramp.key}-producer", pipe.producer),
        profiled(bench, f"capacity-{ramp.key}-worker", pipe.workers[0]),
    ):
        step = run_step(
            bench, pipe, ramp, monitor, rate=rate, seconds=bench.config.capacity_profile_s
        )
    bench.results.data.setdefault("capacity_profiled_steps", {})[ramp.key] = asdict(step)
    _settle(bench, pipe, ramp.key)


def ramps(bench: Bench) -> list[Ramp]:
    cfg = bench.config
    bc, sc = cfg.capacity_batch_connections, cfg.capacity_single_connections
    return [
        Ramp("batch.1w", "Batches of 100, 1 producer, 1 worker", 100, 1,
             cfg.capacity_batch_rates, bc),
        # One stream has one owner: the 2nd worker is a standby (workers on shards: scenario 10).
        Ramp("batch.2w", "Batches of 100, 1 producer, 2 workers on one stream (1 owner + 1 "
             "standby)", 100, 2, cfg.capacity_batch_rates, bc),
        Ramp("single.1w", "Single events, 1 producer, 1 worker", 1, 1,
             cfg.capacity_single_rates, sc),
        Ramp("baseline", "Tutorial baseline (single events + process loop, count=1000)", 1, 0,
             cfg.capacity_baseline_rates, cfg.capacity_baseline_connections, baseline=True),
    ]  # fmt: skip


def run(bench: Bench) -> None:
    results = bench.results
    if bench.wrk is None:
        results.errors.append("scenario 8: wrk not installed")
        return
    done: list[RampResult] = []
    for ramp in ramps(bench):
        if ramp.baseline:  # the product's processes would only idle beside it
            for name in ("producer-1p-backlog", "worker-1", "worker-2"):
                bench.stop(name)
        log(f"== scenario 8 capacity ramp: {ramp.label}")
        fig = results.figure(
            f"capacity.{ramp.key}", 8, f"Sustained capacity: {ramp.label}", "events/s"
        )
        ramp_result = run_ramp(bench, ramp)
        done.append(ramp_result)
        _add_figure(fig, ramp_result)
        results.data.setdefault("capacity", {})[ramp.key] = _to_json(ramp_result)
    best = results.figure(
        BEST_BATCH, 8, "Sustained capacity with batches (best of 1 and 2 workers)", "events/s"
    )
    batch = [r.sustained for r in done if r.ramp.size > 1 and r.sustained is not None]
    best.add(float(max(batch)) if batch else None)
    results.target("capacity_batch", "events/s", BEST_BATCH, BATCH_TARGET)
    results.target(
        "capacity_vs_baseline", "vs baseline", BEST_BATCH, BASELINE_RATIO_TARGET,
        versus=BASELINE_KEY, versus_label="baseline",
    )  # fmt: skip
    results.tables.append(("Capacity ramps (scenario 8; one step per row):", render(done)))


def _add_figure(fig: Any, ramp_result: RampResult) -> None:
    top = next((s for s in ramp_result.steps if s.offered == ramp_result.sustained), None)
    fig.add(
        float(ramp_result.sustained) if ramp_result.sustained is not None else None,
        p50_ms=top.e2e_p50_ms if top else None,
        p99_ms=top.e2e_p99_ms if top else None,
        gen_cpu=top.cpu_percent.get("wrk") if top else None,
        server_cpu=(
            sum(v for k, v in top.cpu_percent.items() if k not in ("wrk", "harness"))
            if top
            else None
        ),
    )
    if ramp_result.note:
        fig.fail(ramp_result.note)
    elif ramp_result.sustained is None:
        fig.fail("no step passed")
    failed = next((s for s in ramp_result.steps if not s.passed), None)
    if failed is not None:
        fig.extra["limit"] = f"{failed.offered:,}/s: {failed.why}"
    else:
        fig.extra["limit"] = "every offered step passed"


def _to_json(ramp_result: RampResult) -> dict[str, Any]:
    return {
        "ramp": asdict(ramp_result.ramp),
        "sustained": ramp_result.sustained,
        "note": ramp_result.note,
        "steps": [asdict(s) for s in ramp_result.steps],
        "samples": [asdict(s) for s in ramp_result.samples],
    }


def render(done: list[RampResult]) -> str:
    lines = [
        "| Ramp | Offered ev/s | Accepted ev/s | Drained ev/s | Backlog start -> end "
        "(slope/s) | e2e p50 / p99 ms | HTTP p99 ms | non-2xx | CPU % producer / workers / "
        "Redis / wrk / harness | Step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in done:
        if not r.steps:
            lines.append(f"| {r.ramp.key} | n/a | | | | | | | | {r.note} |")
        for s in r.steps:
            c = s.cpu_percent
            workers = c.get("loop", 0.0) if r.ramp.baseline else c.get("workers", 0.0)
            cpu = " / ".join(
                f"{v:.0f}"
                for v in (c.get("producer", 0), workers, c.get("redis", 0), c.get("wrk", 0),
                          c.get("harness", 0))
            )  # fmt: skip
            verdict = "pass" if s.passed else f"FAIL: {s.why}"
            lines.append(
                f"| {r.ramp.key} | {s.offered:,} | {s.accepted:,.0f} | {s.drained:,.0f} "
                f"| {s.backlog_start:,} -> {s.backlog_end:,} ({s.backlog_slope:+,.0f}) "
                f"| {_num(s.e2e_p50_ms)} / {_num(s.e2e_p99_ms)} | {_num(s.http_p99_ms)} "
                f"| {s.non_2xx + s.socket_errors} | {cpu} | {verdict} |"
            )
    lines.append("")
    lines.append(
        "Sustained: "
        + "; ".join(
            f"{r.ramp.key} {r.sustained:,} events/s" if r.sustained else f"{r.ramp.key} n/a"
            for r in done
        )
        + ". (For the baseline the workers column is its process loop.)"
    )
    return "\n".join(lines)
