"""Clients no one here wrote, against the real producer over HTTP: InfluxDB 2 and 1.x clients
and the OpenTelemetry SDK's OTLP/HTTP exporter. Every sample each one sends must be readable
through the range API with its labels once a worker pass has processed the stream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from influxdb import InfluxDBClient as InfluxDBClientV1  # type: ignore[import-untyped]
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write.point import Point
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from tests.ports import free_port

from ingest_shared.schema import now_ms

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from redis.asyncio import Redis

BIN = Path(sys.executable).parent
WRITE_KEY = "agent-clients-write-key-0123"
AUTH = {"authorization": f"Bearer {WRITE_KEY}"}
START_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class Producer:
    """A running ``ingest-producer`` and an HTTP client on it."""

    base_url: str
    http: httpx.AsyncClient

    @property
    def host(self) -> str:
        return self.base_url.removeprefix("http://").split(":")[0]

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    async def process(self) -> None:
        """Run worker passes until the stream holds nothing new."""
        while True:
            response = await self.http.post(
                "/api/ingest/workers/process",
                json={"consumer": "w1", "count": 10_000},
                headers=AUTH,
            )
            assert response.status_code == 200, response.text
            if response.json()["read"] == 0:
                return

    async def timed_points(
        self, metric: str, source: str
    ) -> list[tuple[int, float, dict[str, str]]]:
        """(timestamp ms, value, labels) of every raw point of ``metric`` from ``source`` in
        the last hour, through the range API."""
        response = await self.http.get(
            f"/api/ingest/metrics/{metric}/range", params={"source": source}, headers=AUTH
        )
        assert response.status_code == 200, response.text
        return [
            (p["timestampMs"], p["value"], p.get("labels") or {}) for p in response.json()["points"]
        ]

    async def points(self, metric: str, source: str) -> list[tuple[float, dict[str, str] | None]]:
        """(value, labels) of every raw point of ``metric`` from ``source``, sorted."""
        found = [(v, labels or None) for _, v, labels in await self.timed_points(metric, source)]
        return sorted(found, key=lambda item: (item[0], sorted((item[1] or {}).items())))


@contextlib.contextmanager
def _process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "ingest-producer")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
async def producer(redis: Redis, redis_url: str, tmp_path: Path) -> AsyncIterator[Producer]:
    """The real producer (``ingest-producer``: uvicorn) on a free port, with a write key."""
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "REDIS_"))}
    env = base | {
        "REDIS_URL": redis_url,
        "INGEST_HTTP_PORT": str(port),
        "INGEST_HTTP_WORKERS": "1",
        "INGEST_LOG_FORMAT": "json",
        "INGEST_STREAM_SHARDS": "1",
        "INGEST_API_KEYS": WRITE_KEY,
    }
    log = tmp_path / "producer.log"
    base_url = f"http://127.0.0.1:{port}"
    with _process(env, log) as process:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                assert process.poll() is None, log.read_text(errors="replace")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/ready")).status_code == 200:
                        break
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                await asyncio.sleep(0.1)
            yield Producer(base_url, http)


def _point(measurement: str, tags: dict[str, str], fields: dict[str, Any], at_ms: int) -> Point:
    """An influxdb_client Point (its builder methods are untyped)."""
    point = Point(measurement)  # type: ignore[no-untyped-call]
    for key, value in tags.items():
        point.tag(key, value)  # type: ignore[no-untyped-call]
    for key, value in fields.items():
        point.field(key, value)  # type: ignore[no-untyped-call]
    point.time(at_ms, WritePrecision.MS)  # type: ignore[no-untyped-call]
    return point


async def test_influxdb_client_v2_points_and_lines_are_stored_with_their_tags_as_labels(
    producer: Producer,
) -> None:
    at = now_ms() - 5_000
    points = [
        _point("cpu", {"host": "web-1", "cpu": "cpu0"}, {"usage_idle": 90.5}, at),
        _point("cpu", {"host": "web-1", "cpu": "cpu1"}, {"usage_idle": 80.25}, at),
        _point("temperature", {"device_id": "probe-7"}, {"value": 21.5, "ok": True}, at),
    ]
    lines = [
        f"cpu,host=web-1,cpu=cpu0 usage_idle=70 {(at + 1) * 1_000_000}",
        f"disk,host=web-1,path=/data used=42i {(at + 1) * 1_000_000}",
    ]

    with InfluxDBClient(url=producer.base_url, token=WRITE_KEY, org="acme") as client:
        assert client.ping()
        writer = client.write_api(write_options=SYNCHRONOUS)
        writer.write(bucket="telegraf", record=points, write_precision=WritePrecision.MS)
        writer.write(bucket="telegraf", record=lines)
        gzipped = InfluxDBClient(
            url=producer.base_url, token=WRITE_KEY, org="acme", enable_gzip=True
        )
        with gzipped:
            gzipped.write_api(write_options=SYNCHRONOUS).write(
                bucket="telegraf", record=f"uptime,host=web-2 value=3 {at * 1_000_000}"
            )
    await producer.process()

    assert await producer.points("cpu_usage_idle", "web-1") == [
        (70.0, {"cpu": "cpu0"}),
        (80.25, {"cpu": "cpu1"}),
        (90.5, {"cpu": "cpu0"}),
    ]
    assert await producer.points("temperature", "probe-7") == [(21.5, None)]
    assert await producer.points("temperature_ok", "probe-7") == [(1.0, None)]
    assert await producer.points("disk_used", "web-1") == [(42.0, {"path": "/data"})]
    assert await producer.points("uptime", "web-2") == [(3.0, None)]


async def test_influxdb_v1_client_creates_its_database_and_writes_points(
    producer: Producer,
) -> None:
    at = now_ms() - 5_000
    client = InfluxDBClientV1(
        host=producer.host,
        port=producer.port,
        username="telegraf",
        password=WRITE_KEY,
        database="telegraf",
    )
    try:
        client.create_database("telegraf")
        assert client.ping()
        ok = client.write_points(
            [
                {
                    "measurement": "mem",
                    "tags": {"host": "db-1", "kind_of": "ram"},
                    "time": at,
                    "fields": {"used_percent": 55.5, "free": 1024},
                },
                {
                    "measurement": "mem",
                    "tags": {"host": "db-2", "kind_of": "ram"},
                    "time": at,
                    "fields": {"used_percent": 12.0},
                },
            ],
            time_precision="ms",
        )
        assert ok is True
    finally:
        client.close()
    await producer.process()

    assert await producer.points("mem_used_percent", "db-1") == [(55.5, {"kind_of": "ram"})]
    assert await producer.points("mem_free", "db-1") == [(1024.0, {"kind_of": "ram"})]
    assert await producer.points("mem_used_percent", "db-2") == [(12.0, {"kind_of": "ram"})]


class RecordingExporter(OTLPMetricExporter):
    """The SDK's OTLP/HTTP exporter, remembering every point it exported successfully."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.sent: set[tuple[str, int, float, frozenset[tuple[str, str]]]] = set()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float | None = None, **options: Any
    ) -> MetricExportResult:
        result = super().export(metrics_data, timeout_millis, **options)
        assert result is MetricExportResult.SUCCESS
        for resource in metrics_data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        assert isinstance(point, NumberDataPoint)  # a gauge's or a sum's
                        pairs = (point.attributes or {}).items()
                        attributes = frozenset((k, str(v)) for k, v in pairs)
                        at_ms = point.time_unix_nano // 1_000_000
                        self.sent.add((metric.name, at_ms, float(point.value), attributes))
        return result


def _export(endpoint: str, compression: Compression) -> RecordingExporter:
    """A gauge and a counter through the SDK's OTLP/HTTP exporter: flushed once, then again at
    shutdown (the SDK's final collection)."""
    exporter = RecordingExporter(
        endpoint=endpoint,
        headers={"Authorization": f"Bearer {WRITE_KEY}"},
        compression=compression,
        timeout=10,
    )
    # A long interval: force_flush and shutdown are the only exports during the test.
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    # service.instance.id given: the SDK makes up a random one per process otherwise.
    resource = Resource.create(
        {"host.name": "otel-host", "service.name": "thermostat", "service.instance.id": "t-1"}
    )
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    try:
        meter = provider.get_meter("tests")
        gauge = meter.create_gauge("room_temp")
        gauge.set(21.5, {"room": "kitchen"})
        gauge.set(19.0, {"room": "hall"})
        counter = meter.create_counter("requests")
        counter.add(3, {"route": "/a"})
        counter.add(4, {"route": "/a"})
        assert provider.force_flush(timeout_millis=10_000)
    finally:
        provider.shutdown()
    return exporter


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
async def test_opentelemetry_sdk_gauge_and_counter_are_stored_with_their_attributes(
    producer: Producer, compression: Compression
) -> None:
    exporter = await asyncio.to_thread(_export, f"{producer.base_url}/v1/metrics", compression)
    await producer.process()

    service = {"service.name": "thermostat", "service.instance.id": "t-1"}
    extra = {"room_temp": service, "requests": {**service, "temporality": "cumulative"}}
    stored = {
        (metric, at, value, frozenset(labels.items() - extra[metric].items()))
        for metric in extra
        for at, value, labels in await producer.timed_points(metric, "otel-host")
        if labels.items() >= extra[metric].items()
    }
    assert stored == exporter.sent
    assert {(m, v, a) for m, _, v, a in exporter.sent} == {
        ("room_temp", 21.5, frozenset({("room", "kitchen")})),
        ("room_temp", 19.0, frozenset({("room", "hall")})),
        ("requests", 7.0, frozenset({("route", "/a")})),
    }
