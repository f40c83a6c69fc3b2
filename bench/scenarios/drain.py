"""Scenarios 4 (worker drain, 1 then 2 processes) and 6 (baseline drain at count 10/1000).

A backlog is appended server-side in one transaction while the consumers are blocked on
the stream, so they all see it at the instant EXEC returns; the clock stops at the first
poll (every 5 ms) where XPENDING is 0 and the group's lag is 0. Each repetition drains the
worker's backlog and then the baseline's, back to back, so their ratios are paired.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import redis

from bench.config import (
    BASELINE_DB,
    CONSUMER_GROUP,
    DEAD_LETTER_KEY,
    METRICS_KEY,
    N_METRICS,
    N_SOURCES,
    PRODUCT_DB,
    SERIES_PREFIX,
    STREAM_KEY,
)
from bench.loadgen import log
from bench.prefill import now_ms, prefill
from bench.procs import own_cpu_seconds
from bench.profile import profiled
from bench.scenarios.common import scratch_figure

if TYPE_CHECKING:
    from bench.context import Bench
    from bench.procs import Server
    from bench.results import Figure

POLL_S = 0.005
WORKER_READY_TIMEOUT_S = 30.0
PROCESS_PATH = "/api/ingest/workers/process"
WORKER_1P = "worker.drain.1p"
WORKER_2P = "worker.drain.2p"
WORKER_COLD = "worker.drain.cold"
WORKER_TARGET = 50_000.0


def baseline_key(count: int) -> str:
    return f"baseline.drain.c{count}"


@dataclass
class Timeline:
    """Hands out non-overlapping occurredAt ranges (1 ms per event) in the recent past."""

    next_ms: int

    @classmethod
    def for_events(cls, total_events: int) -> Timeline:
        return cls(now_ms() - total_events - 120_000)

    def take(self, events: int) -> int:
        start = self.next_ms
        self.next_ms += events
        return start


def group_state(client: redis.Redis, stream: str, group: str) -> tuple[int, int] | None:
    """(pending, undelivered) of `group`, or None while the group does not exist."""
    pipe = client.pipeline(transaction=False)
    pipe.xpending(stream, group)
    pipe.xinfo_groups(stream)
    pipe.xinfo_stream(stream)
    try:
        summary, groups, info = pipe.execute()
    except redis.ResponseError:  # NOGROUP / no such key
        return None
    name = group.encode()
    found: dict[Any, Any] | None = next((g for g in groups if g["name"] == name), None)
    if found is None:
        return None
    pending = int(summary["pending"])
    lag = found.get("lag")
    if lag is None:  # NULL after trims/deletions: compare ids instead
        lag = 0 if found["last-delivered-id"] == info["last-generated-id"] else 1
    return pending, int(lag)


def wait_drained(
    client: redis.Redis, workers: list[Server], timeout_s: float, total: int
) -> float | None:
    """Monotonic time when nothing is pending or undelivered; None on timeout or death."""
    deadline = time.monotonic() + timeout_s
    next_report = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = group_state(client, STREAM_KEY, CONSUMER_GROUP)
        now = time.monotonic()
        if state is not None and state == (0, 0):
            return now
        if not all(w.alive() for w in workers):
            log("  a worker process exited during the drain")
            return None
        if now > next_report and state is not None:
            log(f"  draining: {state[1]:,} undelivered, {state[0]:,} pending of {total:,}")
            next_report = now + 10
        time.sleep(POLL_S)
    return None


def start_worker(bench: Bench, index: int) -> Server | None:
    """Start worker `index` and wait until its consumer is registered in the group."""
    if f"worker-{index}" in bench.servers:
        return bench.servers[f"worker-{index}"]
    client = bench.client(PRODUCT_DB)
    if index == 1:
        # A fresh stream: the worker creates its group at 0 and must not inherit the HTTP
        # scenarios' events (nor a group some other process made).
        client.delete(STREAM_KEY, DEAD_LETTER_KEY)
        # The HTTP scenarios leave millions of entries behind; hand their memory back so the
        # drain measures the worker, not the allocator (seen: 40k/s here vs 100k/s fresh).
        client.memory_purge()
        log(f"  redis before the drain: {redis_memory_summary(client)}")
    server = bench.worker(index)
    if server is None:
        return None
    consumer = f"bench-worker-{index}".encode()
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not server.alive():
            bench.unavailable[server.name] = f"ingest-worker exited: {server.log_tail(3)}"
            bench.stop(server.name)
            return None
        try:
            consumers = client.xinfo_consumers(STREAM_KEY, CONSUMER_GROUP)
        except redis.ResponseError:
            consumers = []
        if any(c["name"] == consumer for c in consumers):
            return server
        time.sleep(0.05)
    bench.unavailable[server.name] = "ingest-worker never joined the consumer group"
    bench.stop(server.name)
    return None


def drain_worker_once(
    bench: Bench, workers: list[Server], fig: Figure, events: int, base_ms: int
) -> None:
    client = bench.client(PRODUCT_DB)
    redis_pid = bench.redis_server.pid
    dead_before = client.xlen(DEAD_LETTER_KEY)
    cpu_before = sum(w.cpu_seconds() for w in workers)
    redis_cpu_before = _cpu_of(redis_pid)
    started = prefill(client, STREAM_KEY, events, base_ms)
    ended = wait_drained(client, workers, max(120.0, events / 500), events)
    if ended is None:
        fig.fail("drain did not finish")
        fig.add(None)
        return
    elapsed = ended - started
    rate = events / elapsed
    worker_cpu = 100.0 * (sum(w.cpu_seconds() for w in workers) - cpu_before) / elapsed
    redis_cpu = 100.0 * (_cpu_of(redis_pid) - redis_cpu_before) / elapsed
    dead = client.xlen(DEAD_LETTER_KEY) - dead_before
    if dead:
        fig.fail(f"{dead} events dead-lettered")
    missing = _last_sample_missing(client, events, base_ms)
    if missing:
        fig.fail(missing)
    fig.add(rate, server_cpu=worker_cpu)
    fig.extra.setdefault("redis_cpu_percent", []).append(redis_cpu)
    fig.extra.setdefault("seconds", []).append(elapsed)
    client.xtrim(STREAM_KEY, maxlen=0, approximate=False)
    log(
        f"  {fig.label}: {rate:,.0f} events/s ({events:,} in {elapsed:.2f} s, "
        f"worker CPU {worker_cpu:.0f}%, redis CPU {redis_cpu:.0f}%, dead-lettered {dead})"
    )


def drain_baseline_once(
    bench: Bench, server: Server, fig: Figure, *, count: int, events: int, base_ms: int
) -> None:
    client = bench.client(BASELINE_DB)
    # Skip whatever the baseline producer scenario left behind: only our backlog counts.
    client.xtrim(STREAM_KEY, maxlen=0, approximate=False)
    client.xgroup_setid(STREAM_KEY, CONSUMER_GROUP, "$")
    prefill(client, STREAM_KEY, events, base_ms)
    cpu_before, own_before = server.cpu_seconds(), own_cpu_seconds()
    max_calls = events // count * 2 + 100
    deadline = time.monotonic() + max(120.0, events / 100)
    processed = calls = 0
    with httpx.Client(base_url=server.base_url, timeout=60.0) as http:
        started = ended = time.monotonic()
        while calls < max_calls and time.monotonic() < deadline:
            response = http.post(PROCESS_PATH, json={"consumer": "bench", "count": count})
            calls += 1
            if response.status_code != 200:
                fig.fail(f"POST {PROCESS_PATH} -> {response.status_code}")
                fig.add(None)
                return
            body = response.json()
            if not body.get("read"):
                break
            processed += int(body.get("processed", 0))
            ended = time.monotonic()
    pending = int(client.xpending(STREAM_KEY, CONSUMER_GROUP)["pending"])
    elapsed = ended - started
    if processed < events or pending or elapsed <= 0:
        fig.fail(f"baseline processed {processed}/{events}, {pending} pending")
        fig.add(None)
        return
    rate = events / elapsed
    server_cpu = 100.0 * (server.cpu_seconds() - cpu_before) / elapsed
    driver_cpu = 100.0 * (own_cpu_seconds() - own_before) / elapsed
    fig.add(rate, server_cpu=server_cpu, gen_cpu=driver_cpu)
    client.xtrim(STREAM_KEY, maxlen=0, approximate=False)
    log(f"  {fig.label}: {rate:,.0f} events/s ({calls} calls, {elapsed:.2f} s)")


def _last_sample_missing(client: redis.Redis, events: int, base_ms: int) -> str | None:
    """None if the backlog's last event is readable in its per-source series, else why not."""
    try:
        from ingest_shared.keys import Keys
    except ImportError:
        return None  # nothing to check against yet
    i = events - 1
    metric, source = f"metric-{(i // N_SOURCES) % N_METRICS}", f"sensor-{i % N_SOURCES}"
    keys = Keys(STREAM_KEY, DEAD_LETTER_KEY, METRICS_KEY, SERIES_PREFIX)
    key = keys.source_raw(metric, source)
    try:
        sample = client.execute_command("TS.GET", key)  # type: ignore[no-untyped-call]
    except redis.ResponseError as exc:
        return f"TS.GET {key}: {exc}"
    if not sample or int(sample[0]) < base_ms + i:
        return f"last event not in {key}"
    return None


def _cpu_of(pid: int | None) -> float:
    import psutil  # type: ignore[import-untyped,unused-ignore]

    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _worker_figure(bench: Bench) -> tuple[Figure, Server | None]:
    cfg, results = bench.config, bench.results
    n = cfg.drain_events
    shape = f"{N_METRICS} metrics x {N_SOURCES} sources"
    fig = results.figure(
        WORKER_1P, 4, f"Worker drain, 1 process ({n:,} events, {shape})", "events/s"
    )
    results.target("worker_1p", "events/s", WORKER_1P, WORKER_TARGET)
    if 6 in cfg.scenarios:
        for count, threshold in ((10, 30.0), (1000, 5.0)):
            if count in cfg.baseline_counts:
                results.target(
                    f"worker_vs_baseline_c{count}", f"vs baseline c={count}", WORKER_1P,
                    threshold, versus=baseline_key(count), versus_label=f"baseline c={count}",
                )  # fmt: skip
    worker = start_worker(bench, 1)
    if worker is None:
        fig.fail(bench.why_unavailable("worker-1"))
    return fig, worker


def _baseline_figures(bench: Bench) -> tuple[list[tuple[int, Figure]], Server | None]:
    cfg = bench.config
    figs = [
        (
            count,
            bench.results.figure(
                baseline_key(count),
                6,
                f"Baseline drain, count={count} ({cfg.baseline_events:,} events)",
                "events/s",
            ),
        )
        for count in cfg.baseline_counts
    ]
    server = bench.baseline()
    if server is None:
        for _, fig in figs:
            fig.fail(bench.why_unavailable("baseline"))
    return figs, server


def run(bench: Bench) -> None:
    cfg = bench.config
    n, nb = cfg.drain_events, cfg.baseline_events
    want_worker, want_baseline = 4 in cfg.scenarios, 6 in cfg.scenarios
    timeline = Timeline.for_events(
        (cfg.repetitions + 2)
        * (2 * n * want_worker + nb * len(cfg.baseline_counts) * want_baseline)
    )
    w1_fig, worker = _worker_figure(bench) if want_worker else (None, None)
    base_figs, baseline = _baseline_figures(bench) if want_baseline else ([], None)

    # First sight creates every series (and rule): drain once unmeasured, and show that cold
    # rate on its own row, so the measured repetitions all run in the same steady state.
    if worker is not None and w1_fig is not None:
        log("scenario 4: first drain, creating the series (reported separately)")
        cold = bench.results.figure(
            WORKER_COLD, 4, f"Worker drain, 1 process, first sight ({n:,} events, series created)",
            "events/s",
        )  # fmt: skip
        drain_worker_once(bench, [worker], cold, n, timeline.take(n))
    if baseline is not None:
        for count, fig in base_figs:
            warm = max(count, nb // 10)
            scratch = scratch_figure(fig, f"warm-up, {warm} events")
            drain_baseline_once(
                bench, baseline, scratch, count=count, events=warm, base_ms=timeline.take(warm)
            )

    for rep in range(cfg.repetitions):
        log(f"scenarios 4/6 drain: repetition {rep + 1}/{cfg.repetitions}")
        if worker is not None and w1_fig is not None:
            drain_worker_once(bench, [worker], w1_fig, n, timeline.take(n))
            if rep == 0:
                bench.mark("worker-1", "warm:4")
        if baseline is not None:
            for count, fig in base_figs:
                drain_baseline_once(
                    bench, baseline, fig, count=count, events=nb, base_ms=timeline.take(nb)
                )
    bench.stop("baseline")
    if cfg.profile and worker is not None and w1_fig is not None:
        log("scenario 4: profiled drain (not measured)")
        with profiled(bench, "worker-drain", worker):
            drain_worker_once(
                bench, [worker], scratch_figure(w1_fig, "profiled"), n, timeline.take(n)
            )
    if want_worker:
        _two_workers(bench, timeline)


def _two_workers(bench: Bench, timeline: Timeline) -> None:
    cfg, n = bench.config, bench.config.drain_events
    fig = bench.results.figure(
        WORKER_2P, 4, f"Worker drain, 2 processes ({n:,} events)", "events/s"
    )
    # Information only, and not paired in time: the 1-process repetitions ran earlier.
    bench.results.target(
        "worker_2p_vs_1p", "scaling", WORKER_2P, None, versus=WORKER_1P, versus_label="1 process"
    )
    first = start_worker(bench, 1)
    second = start_worker(bench, 2) if first is not None else None
    if first is None or second is None:
        fig.fail(bench.why_unavailable("worker-2" if first else "worker-1"))
        return
    warm = max(1, n // 4)
    log(f"scenario 4 (2 workers): warm-up drain of {warm:,} events (not measured)")
    drain_worker_once(
        bench, [first, second], scratch_figure(fig, "warm-up"), warm, timeline.take(warm)
    )
    for rep in range(cfg.repetitions):
        log(f"scenario 4 (2 workers): repetition {rep + 1}/{cfg.repetitions}")
        drain_worker_once(bench, [first, second], fig, n, timeline.take(n))
        if rep == 0:
            bench.mark("worker-2", "warm:4")
    bench.mark("worker-2", "end")
    bench.stop("worker-2")


def redis_memory_summary(client: redis.Redis) -> str:
    info = client.info("memory")
    keys = ("used_memory_human", "used_memory_rss_human", "mem_fragmentation_ratio")
    return ", ".join(f"{k}={info.get(k)}" for k in keys)
