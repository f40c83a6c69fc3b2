"""The whole pipeline as it runs in production: ``ingest-producer`` and ``ingest-worker``
processes on a real Redis, events over HTTP, series in RedisTimeSeries, clean SIGTERM exits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from tests.ports import free_port

from ingest_shared.redis_client import call
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from redis.asyncio import Redis

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
KEYS = Settings().keys
SOURCES = ("sensor-a", "sensor-b", "sensor-c")
METRICS = ("cpu", "mem")
READINGS = 5
START_TIMEOUT_S = 20.0
DRAIN_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 15.0
# A minute ago on a second boundary: inside retention and clock skew.
BASE_MS = (now_ms() - 60_000) // 1_000 * 1_000


@contextlib.contextmanager
def service(name: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run a console script of the workspace; kill it if the test did not stop it."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / name)], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within_s:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


def stop(process: subprocess.Popen[bytes], log: Path) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{process.args!r} ignored SIGTERM:\n{log.read_text(errors='replace')}")


async def test_events_posted_over_http_reach_the_series_and_both_services_exit_cleanly(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    port, worker_port = free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_"))}
    env = base | {
        "REDIS_URL": redis_url,
        "INGEST_HTTP_PORT": str(port),
        "INGEST_WORKER_HTTP_PORT": str(worker_port),
        "INGEST_LOG_FORMAT": "json",
        "INGEST_CONSUMER_NAME": "e2e-worker",
        "INGEST_BLOCK_MS": "200",
        "INGEST_ROLLUP_BUCKET_MS": "1000",
    }
    producer_log, worker_log = tmp_path / "producer.log", tmp_path / "worker.log"
    with (
        service("ingest-worker", env, worker_log) as worker,
        service("ingest-producer", env, producer_log) as producer,
    ):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def ready() -> bool:
                assert producer.poll() is None, producer_log.read_text(errors="replace")
                assert worker.poll() is None, worker_log.read_text(errors="replace")
                with contextlib.suppress(httpx.TransportError):
                    return (await http.get("/ready")).status_code == 200
                return False

            await eventually(ready, START_TIMEOUT_S, "the producer to be ready")

            posted = await asyncio.gather(
                *(
                    http.post(
                        "/api/ingest/events",
                        json={
                            "source": source,
                            "metric": metric,
                            "value": float(i),
                            "occurredAt": format_ms(BASE_MS + 100 * i),
                        },
                    )
                    for source in SOURCES
                    for metric in METRICS
                    for i in range(READINGS)
                )
            )
            assert [r.status_code for r in posted] == [200] * len(posted)
            total = len(SOURCES) * len(METRICS) * READINGS

            async def drained() -> bool:
                for metric in METRICS:
                    for source in SOURCES:
                        key = KEYS.source_raw(metric, source)
                        if not await redis.exists(key):
                            return False
                        if len(await call(redis, "TS.RANGE", key, "-", "+")) != READINGS:
                            return False
                summary = (await http.get("/api/ingest/summary")).json()
                expected = {"total": total, "added": total, "pending": 0, "dead_lettered": 0}
                return all(summary["queue"][k] == v for k, v in expected.items())

            await eventually(drained, DRAIN_TIMEOUT_S, "the worker to store every event")

            summary = (await http.get("/api/ingest/summary")).json()
            assert [m["metric"] for m in summary["metrics"]] == list(METRICS)
            for metric in summary["metrics"]:
                # The per-metric series: one value per timestamp (last writer wins).
                assert metric["raw"]["timestampMs"] == BASE_MS + 100 * (READINGS - 1)
            recent = (await http.get("/api/ingest/events/recent", params={"count": 3})).json()
            newest_first = sorted(
                (r.json()["id"] for r in posted),
                key=lambda entry_id: tuple(map(int, entry_id.split("-"))),
                reverse=True,
            )
            assert [entry["id"] for entry in recent] == newest_first[:3]

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker_port}") as monitor:
            assert (await monitor.get("/health")).json()["status"] == "ok"
            metrics = (await monitor.get("/metrics")).text
            assert f"ingest_worker_events_processed_total {float(total)}" in metrics

        assert stop(producer, producer_log) == 0
        assert stop(worker, worker_log) == 0
