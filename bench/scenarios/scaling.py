"""Scenario 9: 1, 2, 3 worker processes and 1, 2, 3 producer processes, per CPU-second too.

Since shard ownership (``ingest_worker.ownership``) a stream has one owner at a time: on the
bench's one stream the 2nd and 3rd worker processes are standbys (or take the stream over),
so the worker rows show what idle standbys cost; workers on the default 8 shards are
scenario 10.

Producers (run before scenario 4, so no worker drains what they append):
``INGEST_HTTP_WORKERS`` = 1, 2, 3, all started once and measured back to back inside each
repetition (paired), with single events (``post_event.lua``, 64 connections) and gateway
batches of 100 (``paced_batch.lua`` far above what it can take, 16 connections). Workers
(after scenario 4): the distinct-timestamp backlog of scenario 4 drained by 1, then 2, then
3 workers (each new worker first drains one unmeasured backlog to learn the series). Each row
also gives events per CPU-second of the service's processes, and of those plus Redis, so the
loss of efficiency shows apart from the 2-core ceiling.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

from bench.loadgen import log
from bench.results import median
from bench.scenarios.common import measure, reset_streams, scratch_figure, warm_up
from bench.scenarios.drain import (
    cpu_of,
    drain_worker_once,
    start_worker,
    timeline,
    wait_one_stream_owned,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from bench.context import Bench
    from bench.procs import Server
    from bench.results import Figure

SATURATING_RATE = "100000000"  # events/s offered to paced_batch.lua: always behind, closed loop


def worker_key(n: int) -> str:
    return f"scaling.worker.{n}w"


def producer_key(load: str, n: int) -> str:
    return f"scaling.producer.{load}.{n}p"


def run_producers(bench: Bench) -> None:
    """The producer part: runs before any worker does (they would drain what it appends)."""
    _producers(bench)


def run_workers(bench: Bench) -> None:
    """The worker part, then the table of both; worker-1 keeps running for scenario 5."""
    _workers(bench)
    for index in bench.config.scaling_processes:
        if index != 1:
            bench.stop(f"worker-{index}")
    wait_one_stream_owned(bench, [1])
    bench.results.tables.append(
        ("Scaling (scenario 9; medians; CPU in cores, i.e. % / 100):", render(bench))
    )


def _workers(bench: Bench) -> None:
    cfg, n_events = bench.config, bench.config.drain_events
    tl = timeline(bench)
    running: list[Server] = []
    for n in cfg.scaling_processes:
        # One stream has one owner (ingest_worker.ownership): the other processes are standbys.
        # Workers on the default shards: scenario 10.
        standbys = f", 1 owner + {n - 1} standby" if n > 1 else ""
        fig = bench.results.figure(
            worker_key(n), 9, f"Worker drain, {n} process(es) on one stream{standbys} "
            f"({n_events:,} events)", "events/s",
        )  # fmt: skip
        if n > 1:
            bench.results.target(
                f"scaling_worker_{n}w", "scaling", worker_key(n), None,
                versus=worker_key(1), versus_label="1 process",
            )  # fmt: skip
        for index in range(len(running) + 1, n + 1):
            server = start_worker(bench, index)
            if server is None:
                fig.fail(bench.why_unavailable(f"worker-{index}"))
                return
            running.append(server)
        log(f"scenario 9: {n} worker(s), warm-up drain (not measured)")
        warm = scratch_figure(fig, "warm-up")
        drain_worker_once(bench, running, warm, n_events, tl.take(n_events))
        for rep in range(cfg.repetitions):
            log(f"scenario 9 ({n} workers): repetition {rep + 1}/{cfg.repetitions}")
            drain_worker_once(bench, running, fig, n_events, tl.take(n_events))


def _producers(bench: Bench) -> None:
    cfg = bench.config
    loads: tuple[tuple[str, str, int, tuple[str, ...], int], ...] = (
        ("single", "post_event.lua", cfg.connections, (), 1),
        ("batch", "paced_batch.lua", cfg.batch_connections, (SATURATING_RATE, "100"), 100),
    )
    lineup: list[tuple[Figure, Server, str, int, tuple[str, ...], int]] = []
    for n in cfg.scaling_processes:
        server = bench.producer(n)
        for load, script, conns, args, per_request in loads:
            what = "single events" if load == "single" else "gateway batches of 100"
            fig = bench.results.figure(
                producer_key(load, n), 9, f"Producer {what}, {n} process(es), {conns} conns",
                "events/s",
            )  # fmt: skip
            if n > 1:
                bench.results.target(
                    f"scaling_producer_{load}_{n}p", "scaling", producer_key(load, n), None,
                    versus=producer_key(load, 1), versus_label="1 process",
                )  # fmt: skip
            if server is None:
                fig.fail(bench.why_unavailable(f"producer-{n}p"))
                continue
            warm_up(bench, server, script, conns, args)
            lineup.append((fig, server, script, conns, args, per_request))
    reset_streams(bench)
    redis_pid = bench.redis_server.pid
    for rep in range(cfg.repetitions):
        log(f"scenario 9 producers: repetition {rep + 1}/{cfg.repetitions}")
        for fig, server, script, conns, args, per_request in lineup:
            redis_before, started = cpu_of(redis_pid), time.monotonic()
            measure(
                bench, server, fig, script,
                connections=conns, script_args=args, per_request=per_request,
            )  # fmt: skip
            redis_cpu = 100.0 * (cpu_of(redis_pid) - redis_before) / (time.monotonic() - started)
            fig.extra.setdefault("redis_cpu_percent", []).append(redis_cpu)
            reset_streams(bench)
    for n in cfg.scaling_processes:
        if n != 1:  # producer-1p serves scenario 5 and the memory figures
            bench.stop(f"producer-{n}p")


def rows(bench: Bench) -> list[dict[str, Any]]:
    """One row per (part, process count): rate, CPUs, events per CPU-second, efficiency."""
    out: list[dict[str, Any]] = []
    parts: tuple[tuple[str, Callable[[int], str]], ...] = (
        ("Workers (drain)", worker_key),
        ("Producer, single events", functools.partial(producer_key, "single")),
        ("Producer, batches of 100", functools.partial(producer_key, "batch")),
    )
    for part, key_of in parts:
        first: float | None = None
        for n in bench.config.scaling_processes:
            fig = bench.results.figures.get(key_of(n))
            if fig is None:
                continue
            rate = fig.median
            service = median(fig.server_cpu_percent)
            redis_cpu = median(fig.extra.get("redis_cpu_percent", []))
            per_cpu = rate / (service / 100) if rate and service else None
            per_all = (
                rate / ((service + redis_cpu) / 100) if rate and service and redis_cpu else None
            )
            if n == 1:
                first = per_cpu
            out.append(
                {
                    "part": part, "processes": n, "events_per_s": rate,
                    "service_cpu_percent": service, "redis_cpu_percent": redis_cpu,
                    "events_per_cpu_s": per_cpu, "events_per_cpu_s_with_redis": per_all,
                    "efficiency_vs_1": per_cpu / first if per_cpu and first else None,
                    "speedup_vs_1": None, "note": fig.note,
                }
            )  # fmt: skip
        base = next((r for r in out if r["part"] == part and r["processes"] == 1), None)
        for r in out:
            if r["part"] == part and base and base["events_per_s"] and r["events_per_s"]:
                r["speedup_vs_1"] = r["events_per_s"] / base["events_per_s"]
    return out


def render(bench: Bench) -> str:
    table = rows(bench)
    bench.results.data["scaling"] = table

    def num(value: float | None, digits: int = 0) -> str:
        return "n/a" if value is None else f"{value:,.{digits}f}"

    lines = [
        "| Part | Processes | Events/s | x vs 1 | Service CPU (cores) | Redis CPU (cores) "
        "| Events per CPU-s (service) | Events per CPU-s (service + Redis) | Efficiency vs 1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        service = r["service_cpu_percent"]
        redis_cpu = r["redis_cpu_percent"]
        lines.append(
            f"| {r['part']} | {r['processes']} | {num(r['events_per_s'])} "
            f"| {num(r['speedup_vs_1'], 2)} | {num(service and service / 100, 2)} "
            f"| {num(redis_cpu and redis_cpu / 100, 2)} | {num(r['events_per_cpu_s'])} "
            f"| {num(r['events_per_cpu_s_with_redis'])} | {num(r['efficiency_vs_1'], 2)} |"
        )
    return "\n".join(lines)
