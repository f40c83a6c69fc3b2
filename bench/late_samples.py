"""What a sample older than its series' newest costs Redis, with and without a rollup rule.

    uv run python -m bench.late_samples

One series (and, with a rule, its 60 s avg rollup), 60,000 samples at one per millisecond
sent by TS.MADD in batches of 100; in the "late" runs 1 sample in N is 5 ms older than the one
before it (as concurrent requests reach the stream a few milliseconds out of order). Prints
samples/s and Redis CPU per sample (INFO cpu). The reason the worker sends each batch's
per-metric samples in time order (``ingest_shared.timeseries.in_time_order``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import redis

from ingest_devtools.localredis import LocalRedis

SAMPLES = 60_000
LATE_BY_MS = 5
BASE_MS = 1_700_000_000_000


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def command(client: redis.Redis, *args: object) -> object:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def run(client: redis.Redis, *, late_every: int, rule: bool) -> tuple[float, float]:
    """(samples/s, Redis CPU microseconds per sample)."""
    key = "late-samples"
    client.delete(key, f"{key}:avg")
    command(client, "TS.CREATE", key, "DUPLICATE_POLICY", "LAST")
    if rule:
        command(client, "TS.CREATE", f"{key}:avg", "DUPLICATE_POLICY", "LAST")
        command(client, "TS.CREATERULE", key, f"{key}:avg", "AGGREGATION", "avg", 60_000)
    batch: list[object] = []
    cpu_before = redis_cpu_s(client)
    started = time.perf_counter()
    for n in range(SAMPLES):
        ts = BASE_MS + n
        if late_every and n and n % late_every == 0:
            ts -= LATE_BY_MS
        batch += (key, ts, n)
        if len(batch) >= 300:
            command(client, "TS.MADD", *batch)
            batch = []
    if batch:
        command(client, "TS.MADD", *batch)
    elapsed = time.perf_counter() - started
    return SAMPLES / elapsed, (redis_cpu_s(client) - cpu_before) / SAMPLES * 1e6


def main() -> int:
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalRedis(data_dir=Path(tmp), appendonly=False) as server,
        redis.Redis(port=server.port) as client,
    ):
        print("| Rule | Late samples | samples/s | Redis CPU per sample |")
        print("|---|---|---|---|")
        for rule in (False, True):
            for late_every in (0, 4, 2):
                rate, us = run(client, late_every=late_every, rule=rule)
                late = f"1 in {late_every}, {LATE_BY_MS} ms" if late_every else "none"
                print(f"| {'avg 60 s' if rule else 'none'} | {late} | {rate:,.0f} | {us:.2f} us |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
