"""Scenario 1 (Redis part): what this Redis does with XADD and TS.ADD, by redis-benchmark."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.config import CEILING_DB
from bench.loadgen import LoadGenError, log, run_redis_benchmark

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from bench.context import Bench

# The producer's stream entry, with the source drawn from the keyspace.
XADD = (
    "XADD", "bench:stream", "*", "source", "sensor-__rand_int__", "metric", "cpu",
    "value", "12.5", "occurredAt", "2026-03-19T12:00:00.123Z",
)  # fmt: skip
# One series per random key (auto-created on first write), server time, LAST on collisions.
TS_ADD = ("TS.ADD", "bench:ts:__rand_int__", "*", "12.5", "ON_DUPLICATE", "LAST")
KEYSPACE = 10_000

CASES = (
    ("ceiling.xadd.c1", "redis-benchmark XADD, 1 client", XADD, 1, 1),
    ("ceiling.xadd.c50p64", "redis-benchmark XADD, 50 clients x pipeline 64", XADD, 50, 64),
    ("ceiling.tsadd.c1", "redis-benchmark TS.ADD, 1 client", TS_ADD, 1, 1),
    ("ceiling.tsadd.c50p64", "redis-benchmark TS.ADD, 50 clients x pipeline 64", TS_ADD, 50, 64),
)
QUICK_REQUESTS = {1: 10_000, 64: 300_000}
CALIBRATION_REQUESTS = {1: 20_000, 64: 1_000_000}


def _once(
    bench: Bench,
    binary: Path,
    env: Mapping[str, str],
    case: tuple[Sequence[str], int, int],
    requests: int,
) -> tuple[float, float, float]:
    """One redis-benchmark run: (ops/s, its CPU %, Redis CPU %); the keys are dropped after."""
    command, clients, pipeline = case
    redis_proc = psutil.Process(bench.redis_server.pid)
    cpu = redis_proc.cpu_times()
    started = time.monotonic()
    result = run_redis_benchmark(
        binary, env=env, port=bench.redis_server.port, db=CEILING_DB, command=command,
        requests=requests, clients=clients, pipeline=pipeline, keyspace=KEYSPACE,
    )  # fmt: skip
    wall = time.monotonic() - started
    after = redis_proc.cpu_times()
    redis_cpu = 100.0 * ((after.user - cpu.user) + (after.system - cpu.system)) / wall
    bench.client(CEILING_DB).flushdb()
    return result.ops_per_s, result.cpu_percent, redis_cpu


def run(bench: Bench) -> None:
    from ingest_devtools.localredis import benchmark_binary, server_env

    binary, env = benchmark_binary(), server_env()
    cfg = bench.config
    for key, label, command, clients, pipeline in CASES:
        fig = bench.results.figure(key, 1, label, "ops/s")
        log(f"scenario 1: {label}")
        case = (command, clients, pipeline)
        try:
            if cfg.redis_benchmark_requests:
                requests = cfg.redis_benchmark_requests
            elif cfg.quick:
                requests = QUICK_REQUESTS[pipeline]
            else:
                rate, _, _ = _once(bench, binary, env, case, CALIBRATION_REQUESTS[pipeline])
                requests = max(1000, int(rate * cfg.duration_s))
            for _ in range(cfg.repetitions):
                ops, gen_cpu, redis_cpu = _once(bench, binary, env, case, requests)
                fig.add(ops, gen_cpu=gen_cpu, server_cpu=redis_cpu)
                shown = f"redis-benchmark CPU {gen_cpu:.0f}%, Redis {redis_cpu:.0f}%"
                log(f"  {ops:,.0f} ops/s ({shown})")
        except (LoadGenError, OSError) as exc:
            fig.fail(f"redis-benchmark failed: {str(exc)[:120]}")
