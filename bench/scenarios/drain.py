"""Scenarios 4 (worker drains) and 6 (baseline drain at count 10/1000).

A backlog is appended server-side in one transaction while the consumers are blocked on
the stream, so they all see it at the instant EXEC returns; the clock stops at the first
poll (every 5 ms) where XPENDING is 0 and the group's lag is 0. Each repetition drains, back
to back: the worker on distinct timestamps, the baseline (count 10, then 1000), the worker
with INGEST_MAX_ENTRY_BYTES=0 (native reads), then gateway-shaped backlogs (many events per
metric per millisecond) with the worker, its native-read twin and a twin that does not
collapse same-millisecond samples; so every ratio between them is paired. The variants read
streams of their own and stay warm. Scaling to 2 and 3 workers is scenario 9.
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
    PRODUCT_DB,
    SERIES_PREFIX,
    STREAM_KEY,
    WORKER_VARIANT_PREFIXES,
    WORKER_VARIANT_STREAMS,
)
from bench.loadgen import log
from bench.prefill import DISTINCT, GATEWAY, GATEWAY_REORDERED, Layout, now_ms, prefill
from bench.procs import own_cpu_seconds
from bench.profile import profiled
from bench.scenarios.common import scratch_figure, wait_owned

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bench.context import Bench
    from bench.procs import Server
    from bench.results import Figure
    from ingest_shared.keys import Keys

POLL_S = 0.005
WORKER_READY_TIMEOUT_S = 30.0
PROCESS_PATH = "/api/ingest/workers/process"
WORKER_1P = "worker.drain.1p"
WORKER_COLD = "worker.drain.cold"
WORKER_NATIVE = "worker.drain.native"
GATEWAY_1P = "worker.drain.gateway"
GATEWAY_NATIVE = "worker.drain.gateway.native"
GATEWAY_NOCOLLAPSE = "worker.drain.gateway.nocollapse"
GATEWAY_REORDERED_KEY = "worker.drain.gateway.reordered"
WORKER_TARGET = 140_000.0  # issue 11: one worker process, distinct timestamps
# Timeline headroom: the drains of scenarios 4 and 9 take their occurredAt from one range
# that ends two minutes before the run began (the HTTP scenarios write "now" later).
TIMELINE_MS = 6 * 3_600_000


def baseline_key(count: int) -> str:
    return f"baseline.drain.c{count}"


@dataclass
class Timeline:
    """Hands out non-overlapping, increasing occurredAt ranges in the recent past.

    Series only ever get later samples from it (out-of-order writes cost Redis more), so one
    timeline serves every drain of the run (``timeline(bench)``).
    """

    next_ms: int
    end_ms: int

    def take(self, events: int, layout: Layout = DISTINCT) -> int:
        start = self.next_ms
        self.next_ms += layout.milliseconds(events)
        if self.next_ms > self.end_ms:
            msg = "the drains' timeline ran into the present: raise TIMELINE_MS"
            raise RuntimeError(msg)
        return start


def timeline(bench: Bench) -> Timeline:
    """The run's one timeline for prefilled backlogs."""
    found = bench.state.get("timeline")
    if not isinstance(found, Timeline):
        end = now_ms() - 120_000
        found = bench.state["timeline"] = Timeline(end - TIMELINE_MS, end)
    return found


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
    client: redis.Redis,
    workers: list[Server],
    timeout_s: float,
    total: int,
    stream: str = STREAM_KEY,
) -> float | None:
    """Monotonic time when nothing is pending or undelivered; None on timeout or death."""
    deadline = time.monotonic() + timeout_s
    next_report = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = group_state(client, stream, CONSUMER_GROUP)
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


def start_worker(bench: Bench, index: int, variant: str = "") -> Server | None:
    """Start worker `index` (or a variant) and wait until its consumer is in the group."""
    name = f"worker-{variant or index}"
    if name in bench.servers:
        return bench.servers[name]
    client = bench.client(PRODUCT_DB)
    stream = WORKER_VARIANT_STREAMS.get(variant, STREAM_KEY)
    if variant:
        client.delete(stream)
    elif index == 1:
        # A fresh stream: the worker creates its group at 0 and must not inherit the HTTP
        # scenarios' events (nor a group some other process made).
        client.delete(STREAM_KEY, DEAD_LETTER_KEY)
        # The HTTP scenarios leave millions of entries behind; hand their memory back so the
        # drain measures the worker, not the allocator (seen: 40k/s here vs 100k/s fresh).
        client.memory_purge()
        log(f"  redis before the drain: {redis_memory_summary(client)}")
    server = bench.worker(index, variant)
    if server is None:
        return None
    # Ready once the shard deal has settled: on the one stream a second worker is a standby
    # (ingest_worker.ownership: one owner per shard), or takes the stream over from the first.
    why = wait_owned(
        client, worker_keys(variant), [f"bench-worker-{variant or index}"], [server],
        WORKER_READY_TIMEOUT_S,
    )  # fmt: skip
    if why is None:
        return server
    bench.unavailable[server.name] = f"ingest-worker: {why}"
    bench.stop(server.name)
    return None


def worker_keys(variant: str = "") -> Keys:
    """The keys of the bench's workers on one stream (Bench.worker): the product's unsharded
    layout, or a variant's own stream and key prefix."""
    from ingest_shared.keys import Keys

    if not variant:
        return Keys(STREAM_KEY, DEAD_LETTER_KEY, METRICS_KEY, SERIES_PREFIX)
    return Keys(
        WORKER_VARIANT_STREAMS[variant], DEAD_LETTER_KEY, METRICS_KEY, SERIES_PREFIX,
        prefix=WORKER_VARIANT_PREFIXES[variant],
    )  # fmt: skip


def wait_one_stream_owned(bench: Bench, indexes: Sequence[int]) -> None:
    """After workers were stopped: wait (bounded) until the remaining `indexes` own the one
    stream again, so the next scenario does not start on an unowned stream."""
    servers = [bench.servers[f"worker-{i}"] for i in indexes if f"worker-{i}" in bench.servers]
    consumers = [f"bench-worker-{i}" for i in indexes]
    why = wait_owned(
        bench.client(PRODUCT_DB), worker_keys(), consumers, servers, WORKER_READY_TIMEOUT_S
    )
    if why is not None:
        log(f"  the remaining workers {consumers}: {why}")


def command_stats(client: redis.Redis) -> dict[str, tuple[int, float]]:
    """INFO commandstats as {command: (calls, usec)}."""
    stats: dict[str, tuple[int, float]] = {}
    for name, data in client.info("commandstats").items():
        if isinstance(data, dict):
            stats[name.removeprefix("cmdstat_")] = (int(data["calls"]), float(data["usec"]))
    return stats


def stats_delta(
    before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]], seconds: float
) -> dict[str, dict[str, float]]:
    """Per command: calls, usec_per_call and Redis CPU % spent in it over `seconds`."""
    out: dict[str, dict[str, float]] = {}
    for name, (calls, usec) in after.items():
        calls0, usec0 = before.get(name, (0, 0.0))
        if calls > calls0:
            out[name] = {
                "calls": calls - calls0,
                "usec_per_call": round((usec - usec0) / (calls - calls0), 2),
                "cpu_percent": round((usec - usec0) / 1e4 / seconds, 1) if seconds > 0 else 0.0,
            }
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["cpu_percent"]))


def drain_worker_once(
    bench: Bench,
    workers: list[Server],
    fig: Figure,
    events: int,
    base_ms: int,
    *,
    layout: Layout = DISTINCT,
    stream: str = STREAM_KEY,
) -> None:
    client = bench.client(PRODUCT_DB)
    redis_pid = bench.redis_server.pid
    dead_before = client.xlen(DEAD_LETTER_KEY)
    cpu_before = sum(w.cpu_seconds() for w in workers)
    redis_cpu_before = cpu_of(redis_pid)
    stats_before = command_stats(client)
    started = prefill(client, stream, events, base_ms, layout)
    ended = wait_drained(client, workers, max(120.0, events / 500), events, stream)
    if ended is None:
        fig.fail("drain did not finish")
        fig.add(None)
        return
    elapsed = ended - started
    rate = events / elapsed
    worker_cpu = 100.0 * (sum(w.cpu_seconds() for w in workers) - cpu_before) / elapsed
    redis_cpu = 100.0 * (cpu_of(redis_pid) - redis_cpu_before) / elapsed
    commands = stats_delta(stats_before, command_stats(client), elapsed)
    dead = client.xlen(DEAD_LETTER_KEY) - dead_before
    if dead:
        fig.fail(f"{dead} events dead-lettered")
    missing = _last_sample_missing(client, events, base_ms, layout)
    if missing:
        fig.fail(missing)
    fig.add(rate, server_cpu=worker_cpu)
    fig.extra.setdefault("redis_cpu_percent", []).append(redis_cpu)
    fig.extra.setdefault("seconds", []).append(elapsed)
    fig.extra.setdefault("commandstats", []).append(
        {name: commands[name] for name in list(commands)[:6]}
    )
    client.xtrim(stream, maxlen=0, approximate=False)
    madd = commands.get("ts.madd", {})
    log(
        f"  {fig.label}: {rate:,.0f} events/s ({events:,} in {elapsed:.2f} s, "
        f"worker CPU {worker_cpu:.0f}%, redis CPU {redis_cpu:.0f}%, dead-lettered {dead}, "
        f"TS.MADD {madd.get('usec_per_call', 0):,.0f} us/call)"
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


def _last_sample_missing(
    client: redis.Redis, events: int, base_ms: int, layout: Layout
) -> str | None:
    """None if the backlog's last event is readable in its per-source series, else why not."""
    try:
        from ingest_shared.keys import Keys
    except ImportError:
        return None  # nothing to check against yet
    metric, source, ts = layout.event(events - 1, base_ms)
    keys = Keys(STREAM_KEY, DEAD_LETTER_KEY, METRICS_KEY, SERIES_PREFIX)
    key = keys.source_raw(metric, source)
    try:
        sample = client.execute_command("TS.GET", key)  # type: ignore[no-untyped-call]
    except redis.ResponseError as exc:
        return f"TS.GET {key}: {exc}"
    if not sample or int(sample[0]) < ts:
        return f"last event not in {key}"
    return None


def cpu_of(pid: int | None) -> float:
    import psutil  # type: ignore[import-untyped,unused-ignore]

    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _worker_figures(bench: Bench) -> tuple[Figure, Server | None]:
    cfg, results = bench.config, bench.results
    n = cfg.drain_events
    shape = f"{DISTINCT.n_metrics} metrics x {DISTINCT.n_sources} sources"
    fig = results.figure(
        WORKER_1P, 4, f"Worker drain, 1 process ({n:,} events, {shape}, distinct timestamps)",
        "events/s",
    )  # fmt: skip
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


@dataclass
class Variant:
    """One paired drain of each repetition: which worker, which stream, which backlog."""

    fig: Figure
    server: Server
    stream: str
    layout: Layout


def _variants(bench: Bench, worker: Server) -> list[Variant]:
    """The paired drains after the main one: native reads, gateway backlogs, no collapsing."""
    results, n = bench.results, bench.config.drain_events
    shape = f"{GATEWAY.n_metrics} metrics x {GATEWAY.n_sources} sources, 5 per metric per ms"
    wanted = (
        (WORKER_NATIVE, "native", DISTINCT, "Worker drain, INGEST_MAX_ENTRY_BYTES=0 (native "
         f"XREADGROUP), distinct timestamps ({n:,} events)"),
        (GATEWAY_1P, "", GATEWAY, f"Worker drain, gateway batches ({n:,} events, {shape})"),
        (GATEWAY_NATIVE, "native", GATEWAY,
         "Worker drain, gateway batches, INGEST_MAX_ENTRY_BYTES=0"),
        (GATEWAY_NOCOLLAPSE, "nocollapse", GATEWAY,
         "Worker drain, gateway batches, same-ms samples NOT collapsed"),
        (GATEWAY_REORDERED_KEY, "", GATEWAY_REORDERED,
         "Worker drain, gateway batches, 1 batch in 4 one ms late (as live traffic)"),
    )  # fmt: skip
    results.target(
        "bounded_read_cost", "default / native", WORKER_1P, None,
        versus=WORKER_NATIVE, versus_label="INGEST_MAX_ENTRY_BYTES=0",
    )  # fmt: skip
    results.target(
        "bounded_read_cost_gateway", "default / native", GATEWAY_1P, None,
        versus=GATEWAY_NATIVE, versus_label="INGEST_MAX_ENTRY_BYTES=0",
    )  # fmt: skip
    results.target(
        "collapse_gain", "collapsed / not", GATEWAY_1P, None,
        versus=GATEWAY_NOCOLLAPSE, versus_label="not collapsed",
    )  # fmt: skip
    results.target(
        "reordered_cost", "reordered / in order", GATEWAY_REORDERED_KEY, None,
        versus=GATEWAY_1P, versus_label="gateway in order",
    )  # fmt: skip
    results.target(
        "gateway_vs_distinct", "gateway / distinct", GATEWAY_1P, None,
        versus=WORKER_1P, versus_label="distinct timestamps",
    )  # fmt: skip
    variants: list[Variant] = []
    tl = timeline(bench)
    for key, variant, layout, label in wanted:
        fig = results.figure(key, 4, label, "events/s")
        server = worker if not variant else start_worker(bench, 1, variant)
        if server is None:
            fig.fail(bench.why_unavailable(f"worker-{variant}"))
            continue
        stream = WORKER_VARIANT_STREAMS.get(variant, STREAM_KEY)
        if variant and not any(v.server is server for v in variants):
            # Its own cache of known series is empty: one unmeasured drain fills it.
            log(f"scenario 4: warm-up drain of worker-{variant} (not measured)")
            drain_worker_once(
                bench, [server], scratch_figure(fig, "warm-up"), n, tl.take(n), stream=stream
            )
        variants.append(Variant(fig, server, stream, layout))
    return variants


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
    tl = timeline(bench)
    w1_fig, worker = _worker_figures(bench) if want_worker else (None, None)
    base_figs, baseline = _baseline_figures(bench) if want_baseline else ([], None)

    # First sight creates every series (and rule): drain once unmeasured, and show that cold
    # rate on its own row, so the measured repetitions all run in the same steady state.
    variants: list[Variant] = []
    if worker is not None and w1_fig is not None:
        log("scenario 4: first drain, creating the series (reported separately)")
        cold = bench.results.figure(
            WORKER_COLD, 4, f"Worker drain, 1 process, first sight ({n:,} events, series created)",
            "events/s",
        )  # fmt: skip
        drain_worker_once(bench, [worker], cold, n, tl.take(n))
        variants = _variants(bench, worker)
    if baseline is not None:
        for count, fig in base_figs:
            warm = max(count, nb // 10)
            scratch = scratch_figure(fig, f"warm-up, {warm} events")
            drain_baseline_once(
                bench, baseline, scratch, count=count, events=warm, base_ms=tl.take(warm)
            )

    for rep in range(cfg.repetitions):
        log(f"scenarios 4/6 drain: repetition {rep + 1}/{cfg.repetitions}")
        if worker is not None and w1_fig is not None:
            drain_worker_once(bench, [worker], w1_fig, n, tl.take(n))
            if rep == 0:
                bench.mark("worker-1", "warm:4")
        if baseline is not None:
            for count, fig in base_figs:
                drain_baseline_once(
                    bench, baseline, fig, count=count, events=nb, base_ms=tl.take(nb)
                )
        for v in variants:
            drain_worker_once(
                bench, [v.server], v.fig, n, tl.take(n, v.layout), layout=v.layout,
                stream=v.stream,
            )  # fmt: skip
    bench.stop("baseline")
    for variant in WORKER_VARIANT_STREAMS:
        bench.stop(f"worker-{variant}")
    if cfg.profile and worker is not None and w1_fig is not None:
        log("scenario 4: profiled drain (not measured)")
        with profiled(bench, "worker-drain", worker):
            drain_worker_once(bench, [worker], scratch_figure(w1_fig, "profiled"), n, tl.take(n))


def redis_memory_summary(client: redis.Redis) -> str:
    info = client.info("memory")
    keys = ("used_memory_human", "used_memory_rss_human", "mem_fragmentation_ratio")
    return ", ".join(f"{k}={info.get(k)}" for k in keys)
