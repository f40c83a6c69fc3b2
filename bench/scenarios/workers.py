"""Scenario 10: workers that scale. The whole pipeline with the product's default settings
(8 stream shards, each owned by one worker: ``ingest_worker.ownership``), for 1, 2 and 4 worker
processes.

Each case starts from a flushed product database: one producer (INGEST_HTTP_WORKERS and
INGEST_MAX_BACKLOG at their defaults) and W workers, ready once the workers own every shard
(each shard's lease held by the owner their deal gives it). One unmeasured second of load
creates the series; then wrk posts gateway batches of 100 (``paced_batch.lua``: 20 metrics x
100 sources, ``occurredAt`` left to the server) far above what the pipeline takes (closed
loop) for the load time, and the clock runs until everything accepted is stored (every shard's
group lag + pending = 0). Per case: accepted events (entries the producer appended: wrk's 2xx
answers plus the requests in flight when it stopped), events/s over load + drain, CPU per
event of Redis (``INFO cpu``), the workers and the producer, events per CPU-second of the
three, the drain time after the load stopped, and TS.MADD calls and events per worker
batch (``INFO commandstats``: every batch ends with one XACK). The cases of one repetition run
back to back (in reverse order every other repetition), so the ratios to 1 worker are paired.

The comparison row runs 2 workers the way releases before shard ownership did: one stream
(INGEST_STREAM_SHARDS=1) consumed by both (``bench/shared_stream_worker.py``: no lease), so
both write every per-metric series and their interleaved batches become upserts. With the
product's own worker, INGEST_STREAM_SHARDS=1 would give one owner and a standby instead.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from bench.config import CONSUMER_GROUP, PRODUCT_DB
from bench.loadgen import LoadGenError, WrkResult, log, run_wrk
from bench.results import median
from bench.scenarios.common import wait_owned
from bench.scenarios.drain import command_stats, group_state, stats_delta
from bench.scenarios.scaling import SATURATING_RATE

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from bench.context import Bench
    from bench.procs import Server
    from ingest_shared.keys import Keys

SCRIPT = "paced_batch.lua"
BATCH = 100
WARMUP_S = 1.0
READY_TIMEOUT_S = 60.0  # start-up, then the shard deal settling (a tick per worker or two)
DRAIN_POLL_S = 0.05
SETTLE_S = 0.5
DRAIN_TIMEOUT_MIN_S = 120.0
DRAIN_MIN_RATE = 2_000.0  # events/s: a drain slower than this is given up
REDIS_CPU_LIMIT = 1.1  # Redis CPU per event with W workers, at most 1.1x that of 1
PRODUCER = "pipeline-producer"
SHARED_STREAM_MODULE = "bench.shared_stream_worker"


@dataclass(frozen=True, slots=True)
class Case:
    """One configuration: W workers on the default layout, or the one-stream comparison."""

    workers: int
    one_stream: bool = False

    @property
    def key(self) -> str:
        return f"{self.workers}w" + (".one-stream" if self.one_stream else "")

    @property
    def label(self) -> str:
        if self.one_stream:
            return (
                f"{self.workers} workers on ONE shared stream (INGEST_STREAM_SHARDS=1, "
                "ownership bypassed: the old behaviour; comparison only)"
            )
        return f"{self.workers} worker(s), default settings ({self.shards} shards)"

    @property
    def layout(self) -> str:
        return "1 stream, shared (old)" if self.one_stream else f"default ({self.shards} shards)"

    @property
    def shards(self) -> int:
        return len(self.keys().shards)

    def env(self) -> dict[str, str]:
        return {"INGEST_STREAM_SHARDS": "1"} if self.one_stream else {}

    def keys(self) -> Keys:
        """The product's keys for this case, from its settings with nothing else set."""
        from ingest_shared.settings import load_settings

        return load_settings(self.env()).keys


@dataclass
class Run:
    """One measured case of one repetition."""

    # What the producer appended to the streams during the load: the 2xx responses wrk
    # counted x 100, plus the requests still in flight when wrk stopped (one per connection).
    events: int
    answered: int  # 2xx responses x 100, as wrk counted them
    load_s: float
    drain_s: float
    redis_cpu_s: float
    workers_cpu_s: float
    producer_cpu_s: float
    wrk_cpu_percent: float
    refused_requests: int
    socket_errors: int
    dead_letters: int
    madd_per_batch: float | None
    batches: int  # worker batches (XACK calls)
    commandstats: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / (self.load_s + self.drain_s)

    def us_per_event(self, cpu_s: float) -> float:
        return 1e6 * cpu_s / self.events

    @property
    def events_per_cpu_s(self) -> float:
        return self.events / (self.redis_cpu_s + self.workers_cpu_s + self.producer_cpu_s)


def rate_key(case: Case) -> str:
    return f"workers.rate.{case.key}"


def redis_key(case: Case) -> str:
    return f"workers.redis_us.{case.key}"


def cases(bench: Bench) -> list[Case]:
    cfg = bench.config
    out = [Case(w) for w in cfg.workers_counts]
    if cfg.workers_one_stream:
        out.append(Case(2, one_stream=True))
    return out


# --- Redis readings ------------------------------------------------------------------------


def redis_cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def entries_added(client: redis.Redis, keys: Keys) -> int:
    """Entries ever added to the shard streams (0 for a stream not created yet)."""
    total = 0
    for shard in keys.shards:
        with contextlib.suppress(redis.ResponseError):
            total += int(client.xinfo_stream(shard.stream)["entries-added"])
    return total


def dead_letters(client: redis.Redis, keys: Keys) -> int:
    return sum(int(client.xlen(shard.dead_letter)) for shard in keys.shards)


def stored(client: redis.Redis, keys: Keys) -> bool:
    """True when every shard's group has nothing pending and nothing undelivered."""
    for shard in keys.shards:
        state = group_state(client, shard.stream, CONSUMER_GROUP)
        if state != (0, 0):
            return False
    return True


@dataclass(frozen=True, slots=True)
class Reading:
    """The counters a case is measured with, read at one moment."""

    at: float  # monotonic
    added: int  # entries_added
    dead: int
    redis_cpu_s: float
    workers_cpu_s: float
    producer_cpu_s: float
    commands: dict[str, tuple[int, float]]


def read(client: redis.Redis, keys: Keys, producer: Server, workers: Sequence[Server]) -> Reading:
    return Reading(
        at=time.monotonic(),
        added=entries_added(client, keys),
        dead=dead_letters(client, keys),
        redis_cpu_s=redis_cpu_seconds(client),
        workers_cpu_s=sum(w.cpu_seconds() for w in workers),
        producer_cpu_s=producer.cpu_seconds(),
        commands=command_stats(client),
    )


def wait_stored(
    client: redis.Redis,
    keys: Keys,
    workers: Sequence[Server],
    timeout_s: float,
    reading: Callable[[], Reading],
) -> Reading | None:
    """The reading taken when everything appended is stored; None on timeout or a dead worker.

    The requests in flight when wrk stopped may still be appended after a first look finds
    every group done: a moment counts only if nothing was appended in the SETTLE_S after it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not all(w.alive() for w in workers):
            log("  a worker process exited before the backlog was stored")
            return None
        if not stored(client, keys):
            time.sleep(DRAIN_POLL_S)
            continue
        done = reading()
        time.sleep(SETTLE_S)
        if entries_added(client, keys) == done.added and stored(client, keys):
            return done
    return None


def wait_readers(
    client: redis.Redis, keys: Keys, consumers: Sequence[str], timeout_s: float
) -> str | None:
    """The one-stream comparison has no leases: wait until every consumer reads the stream."""
    stream = keys.shards[0].stream
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.ResponseError):
            names = {c["name"] for c in client.xinfo_consumers(stream, CONSUMER_GROUP)}
            if all(name.encode() in names for name in consumers):
                return None
        time.sleep(DRAIN_POLL_S)
    return f"the workers did not all read {stream} within {timeout_s:.0f} s"


# --- one case ------------------------------------------------------------------------------


def _worker_name(index: int) -> str:
    return f"pipeline-worker-{index}"


def _stop_pipeline(bench: Bench) -> None:
    for name in list(bench.servers):
        if name == PRODUCER or name.startswith("pipeline-worker-"):
            bench.stop(name)


def _start_pipeline(bench: Bench, case: Case) -> tuple[Server, list[Server]] | str:
    """A flushed product database, one producer and the case's workers owning the shards;
    or why not."""
    client = bench.client(PRODUCT_DB)
    client.flushdb()
    client.memory_purge()  # give the last case's memory back: measure the case, not malloc
    producer = bench.default_producer(PRODUCER, **case.env())
    if producer is None:
        return bench.why_unavailable(PRODUCER)
    workers: list[Server] = []
    consumers = [f"bench-pipeline-{i}" for i in range(1, case.workers + 1)]
    for index, consumer in enumerate(consumers, start=1):
        module = SHARED_STREAM_MODULE if case.one_stream else None
        server = bench.default_worker(_worker_name(index), consumer, module=module, **case.env())
        if server is None:
            return bench.why_unavailable(_worker_name(index))
        workers.append(server)
    keys = case.keys()
    if case.one_stream:
        why = wait_readers(client, keys, consumers, READY_TIMEOUT_S)
    else:
        why = wait_owned(client, keys, consumers, workers, READY_TIMEOUT_S)
    return why if why is not None else (producer, workers)


def _load(bench: Bench, producer: Server, seconds: float) -> WrkResult:
    assert bench.wrk is not None
    return run_wrk(
        bench.wrk, producer.base_url, SCRIPT, duration_s=seconds,
        connections=bench.config.batch_connections, script_args=[SATURATING_RATE, str(BATCH)],
    )  # fmt: skip


def measure_case(bench: Bench, case: Case) -> Run | str:
    """Start the case's processes, warm up, load, wait until stored: a Run, or why not."""
    client = bench.client(PRODUCT_DB)
    keys = case.keys()
    started = _start_pipeline(bench, case)
    if isinstance(started, str):
        return started
    producer, workers = started
    reading = functools.partial(read, client, keys, producer, workers)
    try:
        _load(bench, producer, WARMUP_S)
        if wait_stored(client, keys, workers, DRAIN_TIMEOUT_MIN_S, reading) is None:
            return "the warm-up load was not stored in time"
        before = reading()
        t0 = time.monotonic()
        result = _load(bench, producer, bench.config.workers_load_s)
        t1 = time.monotonic()
        answered = result.ok_requests * BATCH
        timeout = max(DRAIN_TIMEOUT_MIN_S, answered / DRAIN_MIN_RATE)
        after = wait_stored(client, keys, workers, timeout, reading)
        if after is None:
            return f"not stored within {timeout:.0f} s of the load's end"
    except (LoadGenError, OSError) as exc:
        return f"wrk failed: {str(exc)[:160]}"
    finally:
        _stop_pipeline(bench)
    return _run(before, after, t0, t1, result)


def _run(before: Reading, after: Reading, t0: float, t1: float, result: WrkResult) -> Run | str:
    events = after.added - before.added
    if events <= 0:
        return f"nothing appended ({result.non_2xx} non-2xx, {result.socket_errors} errors)"
    commands = stats_delta(before.commands, after.commands, after.at - t0)
    batches = commands.get("xack", {}).get("calls", 0.0)
    madds = commands.get("ts.madd", {}).get("calls", 0.0)
    return Run(
        events=events,
        answered=result.ok_requests * BATCH,
        load_s=t1 - t0,
        drain_s=after.at - t1,
        redis_cpu_s=after.redis_cpu_s - before.redis_cpu_s,
        workers_cpu_s=after.workers_cpu_s - before.workers_cpu_s,
        producer_cpu_s=after.producer_cpu_s - before.producer_cpu_s,
        wrk_cpu_percent=result.cpu_percent,
        refused_requests=result.non_2xx,
        socket_errors=result.socket_errors,
        dead_letters=after.dead - before.dead,
        madd_per_batch=madds / batches if batches else None,
        batches=int(batches),
        commandstats={name: commands[name] for name in list(commands)[:8]},
    )


def _record(bench: Bench, case: Case, outcome: Run | str) -> None:
    rate = bench.results.figures[rate_key(case)]
    redis_us = bench.results.figures[redis_key(case)]
    if isinstance(outcome, str):
        log(f"  {case.key}: n/a ({outcome})")
        for fig in (rate, redis_us):
            fig.fail(outcome)
            fig.add(None)
        return
    run = outcome
    cpu_percent = 100.0 * (run.workers_cpu_s + run.producer_cpu_s) / (run.load_s + run.drain_s)
    rate.add(run.events_per_s, gen_cpu=run.wrk_cpu_percent, server_cpu=cpu_percent)
    redis_us.add(run.us_per_event(run.redis_cpu_s))
    problems = []
    if run.events < run.answered:
        problems.append(f"{run.events:,} events appended for {run.answered:,} answered 2xx")
    if run.dead_letters:
        problems.append(f"{run.dead_letters} events dead-lettered")
    if run.socket_errors:
        problems.append(f"{run.socket_errors} socket errors")
    for problem in problems:
        rate.fail(problem)
    bench.results.data.setdefault("workers", {}).setdefault(case.key, []).append(
        {
            **asdict(run),
            "events_per_s": run.events_per_s,
            "events_per_cpu_s": run.events_per_cpu_s,
            "events_per_batch": run.events / run.batches if run.batches else None,
        }
    )
    madd = "n/a" if run.madd_per_batch is None else f"{run.madd_per_batch:.2f}"
    size = f"{run.events / run.batches:,.0f}" if run.batches else "n/a"
    log(
        f"  {case.key}: {run.events:,} events, {run.events_per_s:,.0f} events/s "
        f"(load {run.load_s:.1f} s + drain {run.drain_s:.1f} s); per event: Redis "
        f"{run.us_per_event(run.redis_cpu_s):.1f} µs, workers "
        f"{run.us_per_event(run.workers_cpu_s):.1f} µs, producer "
        f"{run.us_per_event(run.producer_cpu_s):.1f} µs; {run.events_per_cpu_s:,.0f} events "
        f"per CPU-s; TS.MADD per batch {madd}, {size} events per batch; refused "
        f"{run.refused_requests} requests, "
        f"wrk CPU {run.wrk_cpu_percent:.0f}%" + (f"; {'; '.join(problems)}" if problems else "")
    )


def _figures_and_targets(bench: Bench, lineup: list[Case]) -> None:
    results, seconds = bench.results, bench.config.workers_load_s
    for case in lineup:
        results.figure(
            rate_key(case), 10,
            f"Whole pipeline, {case.label}: events/s over {seconds:g} s of load + drain",
            "events/s",
        )  # fmt: skip
        results.figure(
            redis_key(case), 10, f"Whole pipeline, {case.label}: Redis CPU per event",
            "µs/event",
        )  # fmt: skip
    one = Case(1)
    for case in lineup:
        if case.one_stream or case.workers == 1:
            continue
        results.target(
            f"workers_redis_cpu_{case.key}", "Redis CPU per event", redis_key(case),
            REDIS_CPU_LIMIT, comparison="<=", versus=redis_key(one), versus_label="1 worker",
        )  # fmt: skip
        results.target(
            f"workers_rate_{case.key}", "events/s", rate_key(case), 1.0,
            versus=rate_key(one), versus_label="1 worker",
        )  # fmt: skip
    for case in lineup:
        if not case.one_stream:
            continue
        versus = Case(case.workers)
        label = f"{versus.workers} workers on {versus.shards} shards"
        results.target(
            f"workers_redis_cpu_{case.key}", "Redis CPU per event", redis_key(case), None,
            versus=redis_key(versus), versus_label=label,
        )  # fmt: skip
        results.target(
            f"workers_rate_{case.key}", "events/s", rate_key(case), None,
            versus=rate_key(versus), versus_label=label,
        )  # fmt: skip


def run(bench: Bench) -> None:
    if bench.wrk is None:
        bench.results.errors.append("scenario 10: wrk not installed")
        return
    # The other scenarios' product processes use the one-stream layout and the same list of
    # live workers: they would stand in the deal of shards. Their memory ends here.
    for name in list(bench.servers):
        if name.startswith(("producer-", "worker-")):
            bench.mark(name, "end", first_only=True)
            bench.stop(name)
    lineup = cases(bench)
    _figures_and_targets(bench, lineup)
    cfg = bench.config
    for rep in range(cfg.repetitions):
        log(f"scenario 10 workers: repetition {rep + 1}/{cfg.repetitions}")
        for case in lineup if rep % 2 == 0 else reversed(lineup):
            log(f"  {case.key}: {case.label}")
            _record(bench, case, measure_case(bench, case))
    bench.results.tables.append(
        (
            "Workers that scale (scenario 10; whole pipeline, gateway batches of 100, "
            f"{cfg.workers_load_s:g} s of load; medians; per-event CPU in µs):",
            render(bench, lineup),
        )
    )


# --- the table -----------------------------------------------------------------------------


def rows(bench: Bench, lineup: list[Case]) -> list[dict[str, Any]]:
    """One row per case: medians over the repetitions."""
    data = bench.results.data.get("workers", {})
    out: list[dict[str, Any]] = []
    for case in lineup:
        runs: list[dict[str, Any]] = data.get(case.key, [])

        def med(name: str, runs: list[dict[str, Any]] = runs) -> float | None:
            return median([r[name] for r in runs])

        def per_event(name: str, runs: list[dict[str, Any]] = runs) -> float | None:
            return median([1e6 * r[name] / r["events"] if r["events"] else None for r in runs])

        out.append(
            {
                "case": case.key, "workers": case.workers, "layout": case.layout,
                "repetitions": len(runs), "events": med("events"),
                "events_per_s": med("events_per_s"), "drain_s": med("drain_s"),
                "redis_us_per_event": per_event("redis_cpu_s"),
                "workers_us_per_event": per_event("workers_cpu_s"),
                "producer_us_per_event": per_event("producer_cpu_s"),
                "events_per_cpu_s": med("events_per_cpu_s"),
                "madd_per_batch": med("madd_per_batch"),
                "events_per_batch": med("events_per_batch"),
                "refused_requests": med("refused_requests"),
                "note": bench.results.figures[rate_key(case)].note,
            }
        )  # fmt: skip
    return out


def render(bench: Bench, lineup: list[Case]) -> str:
    table = rows(bench, lineup)
    bench.results.data["workers_table"] = table

    def num(value: float | None, digits: int = 0) -> str:
        return "n/a" if value is None else f"{value:,.{digits}f}"

    lines = [
        "| Workers | Layout | Accepted events | Events/s (load + drain) | Drain after load (s) "
        "| Redis µs/event | Workers µs/event | Producer µs/event "
        "| Events per CPU-s (producer + workers + Redis) | TS.MADD per batch | Events per batch "
        "| Requests refused | Note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['workers']} | {r['layout']} | {num(r['events'])} | {num(r['events_per_s'])} "
            f"| {num(r['drain_s'], 1)} | {num(r['redis_us_per_event'], 1)} "
            f"| {num(r['workers_us_per_event'], 1)} | {num(r['producer_us_per_event'], 1)} "
            f"| {num(r['events_per_cpu_s'])} | {num(r['madd_per_batch'], 2)} "
            f"| {num(r['events_per_batch'])} "
            f"| {num(r['refused_requests'])} | {r['note']} |"
        )
    lines += [
        "",
        "Targets (main table, paired per repetition): Redis CPU per event with 2 and 4 "
        f"workers <= {REDIS_CPU_LIMIT:g}x that of 1 worker; events/s with 2 and 4 workers >= "
        "that of 1 worker. The one-stream row is for comparison only: both workers consume "
        "the one stream (bench/shared_stream_worker.py), as releases before shard ownership "
        "did.",
    ]
    return "\n".join(lines)
