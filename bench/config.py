"""Run settings of the benchmark: parsed once from the command line, then passed down."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WRK_DIR = BENCH_DIR / "wrk"
RESULTS_DIR = BENCH_DIR / "results"

ALL_SCENARIOS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)

# Key names the bench passes to the producer and worker; they match the product defaults.
STREAM_KEY = "telemetry:events"
# Worker variants of the paired drains read streams of their own (same series), so each
# stays warm and idle while another drains.
WORKER_VARIANT_STREAMS = {
    "native": "telemetry:events:native",  # INGEST_MAX_ENTRY_BYTES=0: native XREADGROUP
    "nocollapse": "telemetry:events:nocollapse",  # bench/nocollapse_worker.py
}
# ... and key prefixes of their own (INGEST_KEY_PREFIX): their own list of live workers and
# their own stream lease, so the deal of shards never hands a variant's stream to worker-1.
WORKER_VARIANT_PREFIXES = {variant: f"telemetry:{variant}:" for variant in WORKER_VARIANT_STREAMS}
DEAD_LETTER_KEY = "telemetry:events:dead-letter"
CONSUMER_GROUP = "telemetry-workers"
METRICS_KEY = "telemetry:metrics"
SERIES_PREFIX = "telemetry:ts"

# Redis logical databases: the product, the tutorial baseline and redis-benchmark never
# share keys, so each can be reset without disturbing the others.
PRODUCT_DB = 0
BASELINE_DB = 1
CEILING_DB = 2

N_METRICS = 50
N_SOURCES = 200
# Gateway-shaped traffic (issue 11): HTTP batches of 100 = 5 sources x 20 metrics, occurredAt
# left to the server, so every event of a batch has the same millisecond.
GATEWAY_METRICS = 20
GATEWAY_SOURCES = 100
GATEWAY_BATCH = 100


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """Everything that shapes one run."""

    duration_s: float = 10.0
    repetitions: int = 3
    connections: int = 64
    batch_connections: int = 16
    batch_sizes: tuple[int, ...] = (100, 1000)
    drain_events: int = 200_000
    baseline_events: int = 20_000
    baseline_counts: tuple[int, ...] = (10, 1000)
    e2e_rate: int = 2_000
    e2e_duration_s: float = 30.0
    e2e_connections: int = 32
    probe_rate: float = 20.0
    redis_benchmark_requests: int | None = None  # None: calibrate to duration_s
    # Scenario 8, the sustained-capacity ramp: offered events/s per step, per load shape.
    capacity_step_s: float = 60.0
    capacity_batch_rates: tuple[int, ...] = (
        20_000, 40_000, 60_000, 80_000, 90_000, 100_000, 110_000, 120_000, 140_000,
    )  # fmt: skip
    capacity_single_rates: tuple[int, ...] = (2_000, 4_000, 6_000, 8_000, 10_000, 12_000, 15_000)
    capacity_baseline_rates: tuple[int, ...] = (500, 1_000, 1_500, 2_000, 3_000, 4_000)
    capacity_batch_connections: int = 64
    capacity_single_connections: int = 128
    # The baseline's redis-py pool refuses past ~100 concurrent requests (MaxConnectionsError,
    # a 500): at its rates 32 connections are plenty, the reading most favourable to it.
    capacity_baseline_connections: int = 32
    capacity_profile_s: float = 20.0
    # Scenario 9: 1..N producer processes and 1..N workers.
    scaling_processes: tuple[int, ...] = (1, 2, 3)
    # Scenario 10: the whole pipeline with the product's defaults, 1, 2 and 4 workers; seconds
    # of load per case (--duration sets it too); and the 2-worker one-stream comparison row.
    workers_counts: tuple[int, ...] = (1, 2, 4)
    workers_load_s: float = 15.0
    workers_one_stream: bool = True
    # Scenario 12: hours x devices of samples loaded, and read connections looping.
    mixed_devices: int = 1_000
    mixed_hours: float = 24.0
    mixed_readers: int = 8
    scenarios: tuple[int, ...] = ALL_SCENARIOS
    install_wrk: bool = True
    profile: bool = False
    quick: bool = False
    results_dir: Path = RESULTS_DIR
    write_results: bool = True

    @classmethod
    def quick_mode(cls) -> BenchConfig:
        """A smoke run: every scenario once, for about a second or two each."""
        return cls(
            duration_s=1.5,
            repetitions=1,
            drain_events=20_000,
            baseline_events=2_000,
            e2e_duration_s=3.0,
            redis_benchmark_requests=0,
            capacity_step_s=2.0,
            capacity_batch_rates=(20_000, 150_000),
            capacity_single_rates=(2_000, 15_000),
            capacity_baseline_rates=(500, 4_000),
            capacity_profile_s=0.0,
            scaling_processes=(1, 2),
            workers_load_s=2.0,
            mixed_devices=100,
            quick=True,
        )


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Run the telemetry-ingest benchmark (issue 4) against a fresh local Redis.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: ~1-2 s per figure, 1 rep")
    parser.add_argument(
        "--duration",
        type=float,
        help="seconds per measured figure (default 10; scenario 10's load: 15)",
    )
    parser.add_argument("--reps", type=int, help="repetitions per figure (default 3)")
    parser.add_argument("--e2e-duration", type=float, help="seconds of offered load (default 30)")
    parser.add_argument("--e2e-rate", type=int, help="offered events/s end to end (default 2000)")
    parser.add_argument("--drain-events", type=int, help="worker backlog size (default 200000)")
    parser.add_argument("--baseline-events", type=int, help="baseline backlog (default 20000)")
    parser.add_argument(
        "--step", type=float, help="seconds per step of the capacity ramp (default 60)"
    )
    parser.add_argument(
        "--only", help="comma-separated scenario numbers to run, e.g. 1,2,6 (default all)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="add an unmeasured py-spy repetition for the producer and the worker",
    )
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/")
    parser.add_argument("--results-dir", type=Path, help="where to write <date>.json and .md")
    args = parser.parse_args(argv)

    config = BenchConfig.quick_mode() if args.quick else BenchConfig()
    overrides: dict[str, object] = {}
    for attr, name in (
        ("duration", "duration_s"),
        ("reps", "repetitions"),
        ("e2e_duration", "e2e_duration_s"),
        ("e2e_rate", "e2e_rate"),
        ("drain_events", "drain_events"),
        ("baseline_events", "baseline_events"),
        ("step", "capacity_step_s"),
        ("results_dir", "results_dir"),
    ):
        value = getattr(args, attr)
        if value is not None:
            overrides[name] = value
    if args.duration is not None:
        overrides["workers_load_s"] = args.duration
    if args.only:
        overrides["scenarios"] = tuple(sorted({int(p) for p in args.only.split(",") if p.strip()}))
    if args.profile:
        overrides["profile"] = True
    if args.no_install:
        overrides["install_wrk"] = False
    if args.no_write:
        overrides["write_results"] = False
    return replace(config, **overrides)  # type: ignore[arg-type]
