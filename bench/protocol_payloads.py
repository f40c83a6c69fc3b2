"""Realistic agent request bodies for scenario 11, built with the protocols' own encoders.

- Telegraf: its default batch of 1,000 lines (``metric_batch_size``), cpu/mem/disk/net/system
  lines of 100 hosts, 4 numeric fields each (4,000 samples), nanosecond timestamps, as
  ``[[outputs.influxdb_v2]]`` sends them (uncompressed by default).
- Prometheus remote-write: 2,000 series with one sample each (``max_samples_per_send``),
  ``__name__``, ``instance``, ``job`` and one more label, snappy-compressed protobuf.
- OTLP/HTTP: one export of 1,000 points: 50 gauges x 20 points (5 hosts x 4 attribute sets),
  protobuf, as the SDK's ``OTLPMetricExporter`` sends it (no compression by default).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cramjam
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Gauge,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from ingest_producer.protocols import remote_write_pb2

TELEGRAF_LINES = 1_000
REMOTE_WRITE_SAMPLES = 2_000
OTLP_POINTS = 1_000

_MEASUREMENTS = {
    "cpu": ("usage_user", "usage_system", "usage_idle", "usage_iowait"),
    "mem": ("used_percent", "available", "free", "cached"),
    "disk": ("used_percent", "free", "inodes_used", "inodes_free"),
    "net": ("bytes_recv", "bytes_sent", "packets_recv", "packets_sent"),
    "system": ("load1", "load5", "load15", "uptime"),
}
_OTHER_TAG = {"cpu": "cpu", "mem": "region", "disk": "device", "net": "interface", "system": "os"}


@dataclass(frozen=True, slots=True)
class Payload:
    """One request body, what it is sent as, and how many samples it carries."""

    path: str
    body: bytes
    content_type: str
    samples: int
    encoding: str = ""


def telegraf_batch(now_ns: int | None = None) -> Payload:
    """1,000 line-protocol lines (4 fields each) of the last second."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    lines = []
    names = list(_MEASUREMENTS)
    for n in range(TELEGRAF_LINES):
        measurement = names[n % len(names)]
        tag = _OTHER_TAG[measurement]
        fields = ",".join(
            f"{field}={(n * 7 + i) % 1000 / 10}"
            for i, field in enumerate(_MEASUREMENTS[measurement])
        )
        stamp = now_ns - (n % 1000) * 1_000_000
        lines.append(f"{measurement},host=host-{n % 100},{tag}={tag}{n % 4} {fields} {stamp}")
    body = ("\n".join(lines) + "\n").encode()
    samples = TELEGRAF_LINES * 4
    return Payload("/api/v2/write?org=bench&bucket=bench&precision=ns", body, "text/plain", samples)


def remote_write_request(now_ms: int | None = None) -> Payload:
    """2,000 series, one sample each, snappy block format."""
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    request = remote_write_pb2.WriteRequest()
    for n in range(REMOTE_WRITE_SAMPLES):
        series = request.timeseries.add()
        for name, value in sorted(
            {
                "__name__": f"node_metric_{n % 40}",
                "instance": f"host-{n % 50}:9100",
                "job": "node",
                "device": f"dev{n // 2000}",
            }.items()
        ):
            label = series.labels.add()
            label.name, label.value = name, value
        sample = series.samples.add()
        sample.value = (n * 13) % 1000 / 10
        sample.timestamp = now_ms - n % 1000
    body = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
    return Payload("/api/v1/write", body, "application/x-protobuf", REMOTE_WRITE_SAMPLES, "snappy")


def otlp_export(now_ns: int | None = None) -> Payload:
    """One ExportMetricsServiceRequest: 5 hosts x 50 gauges x 4 attribute sets = 1,000 points."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    request = ExportMetricsServiceRequest()
    hosts, metrics, sets = 5, 50, 4
    for h in range(hosts):
        resource = Resource(
            attributes=[
                KeyValue(key="host.name", value=AnyValue(string_value=f"host-{h}")),
                KeyValue(key="service.name", value=AnyValue(string_value="checkout")),
            ]
        )
        scope = ScopeMetrics()
        for m in range(metrics):
            points = [
                NumberDataPoint(
                    time_unix_nano=now_ns - a * 1_000_000,
                    as_double=(h * 31 + m * 7 + a) % 100 / 3,
                    attributes=[KeyValue(key="state", value=AnyValue(string_value=f"s{a}"))],
                )
                for a in range(sets)
            ]
            scope.metrics.append(Metric(name=f"app.metric.{m}", gauge=Gauge(data_points=points)))
        request.resource_metrics.append(ResourceMetrics(resource=resource, scope_metrics=[scope]))
    body = request.SerializeToString()
    return Payload("/v1/metrics", body, "application/x-protobuf", hosts * metrics * sets)
