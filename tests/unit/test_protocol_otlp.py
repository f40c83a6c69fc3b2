"""The OTLP/HTTP metrics decoder, fed by the OpenTelemetry SDK's own exporter encoder.

Metrics are recorded with the real SDK, collected by an ``InMemoryMetricReader`` and encoded
by the OTLP exporter's ``encode_metrics`` (what ``OTLPMetricExporter`` POSTs, offline); the
same request goes through protobuf's ``MessageToJson`` for the JSON path.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import TYPE_CHECKING, Any

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.metrics import Counter, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from ingest_producer.protocols import Decoded, ProtocolError, ProtocolSample
from ingest_producer.protocols.otlp import OtlpMapping, decode_otlp_json, decode_otlp_protobuf

if TYPE_CHECKING:
    from collections.abc import Iterable

T0_NS = 1_773_923_696_789_123_456
T0_MS = 1_773_923_696_789
# Recent SDKs add a random service.instance.id unless the resource names one.
RESOURCE = {"host.name": "app-01", "service.name": "checkout", "service.instance.id": "pod-7"}
CHECKOUT = {"service.name": "checkout", "service.instance.id": "pod-7"}
DELTA = {"temporality": "delta"}


def _observe(_: CallbackOptions) -> Iterable[Observation]:
    yield Observation(21.5, {"room": "kitchen"})
    yield Observation(19.0, {"room": "hall"})


def _sdk_request(resource: dict[str, Any]) -> ExportMetricsServiceRequest:
    """What OTLPMetricExporter would send for a few instruments of every kind."""
    reader = InMemoryMetricReader(preferred_temporality={Counter: AggregationTemporality.DELTA})
    provider = MeterProvider(resource=Resource.create(resource), metric_readers=[reader])
    try:
        meter = provider.get_meter("checkout.instrumentation", "1.0")
        requests = meter.create_counter("http.requests")
        requests.add(5, {"http.route": "/cart", "ok": True})
        requests.add(2, {"http.route": "/pay", "ok": False})
        queue = meter.create_up_down_counter("queue.depth")
        queue.add(7)
        queue.add(-2)
        meter.create_observable_gauge("room.temperature", callbacks=[_observe], unit="Cel")
        latency = meter.create_histogram("http.duration")
        latency.record(0.25, {"http.route": "/cart"})
        latency.record(0.5, {"http.route": "/pay"})
        data = reader.get_metrics_data()
    finally:
        provider.shutdown()
    assert data is not None
    return encode_metrics(data)


def _by_metric(decoded: Decoded) -> dict[str, list[ProtocolSample]]:
    found: dict[str, list[ProtocolSample]] = {}
    for sample in decoded.samples:
        found.setdefault(sample.metric, []).append(sample)
    return found


def _check_sdk_decoding(decoded: Decoded) -> None:
    metrics = _by_metric(decoded)
    assert sorted(metrics) == ["http.requests", "queue.depth", "room.temperature"]
    requests = sorted(metrics["http.requests"], key=lambda s: s.value)
    assert [(s.source, s.value, s.labels) for s in requests] == [
        ("app-01", 2.0, {**CHECKOUT, "http.route": "/pay", "ok": "false", **DELTA}),
        ("app-01", 5.0, {**CHECKOUT, "http.route": "/cart", "ok": "true", **DELTA}),
    ]
    (queue,) = metrics["queue.depth"]
    assert (queue.value, queue.labels) == (5.0, {**CHECKOUT, "temporality": "cumulative"})
    rooms = {s.labels["room"]: s.value for s in metrics["room.temperature"]}
    assert rooms == {"kitchen": 21.5, "hall": 19.0}
    assert "temporality" not in metrics["room.temperature"][0].labels
    for sample in decoded.samples:
        assert sample.timestamp_ms is not None
        assert sample.timestamp_ms > 1_700_000_000_000
        # SDK resource attributes (telemetry.sdk.*) are not labels.
        assert not any(name.startswith("telemetry.") for name in sample.labels)
    assert [(r.item, r.reason, r.count) for r in decoded.rejected] == [
        ("metric 'http.duration'", "histogram data points are not supported", 2)
    ]


def test_sdk_export_protobuf() -> None:
    request = _sdk_request(RESOURCE)
    decoded = decode_otlp_protobuf(request.SerializeToString())
    _check_sdk_decoding(decoded)
    assert decoded.skipped == {}


def test_sdk_export_through_message_to_json() -> None:
    request = _sdk_request(RESOURCE)
    body = json_format.MessageToJson(request).encode()
    assert b"timeUnixNano" in body  # camelCase, 64-bit integers as strings
    decoded = decode_otlp_json(body)
    _check_sdk_decoding(decoded)
    assert decoded == decode_otlp_protobuf(request.SerializeToString())


def test_sdk_export_json_with_integer_enums_matches_protobuf() -> None:
    request = _sdk_request(RESOURCE)
    body = json_format.MessageToJson(request, use_integers_for_enums=True).encode()
    assert decode_otlp_json(body) == decode_otlp_protobuf(request.SerializeToString())


def test_json_with_the_proto_field_names_is_not_lost() -> None:
    # Not OTLP's spelling, but protobuf's JSON parsers take it and some senders write it.
    request = _sdk_request(RESOURCE)
    body = json_format.MessageToJson(request, preserving_proto_field_name=True).encode()
    assert b'"resource_metrics"' in body
    assert decode_otlp_json(body) == decode_otlp_protobuf(request.SerializeToString())


def test_source_falls_back_through_the_configured_attributes() -> None:
    resource = {"service.instance.id": "pod-7", "service.name": "checkout"}
    decoded = decode_otlp_protobuf(_sdk_request(resource).SerializeToString())
    assert {s.source for s in decoded.samples} == {"pod-7"}
    (queue,) = _by_metric(decoded)["queue.depth"]
    assert queue.labels == {"service.name": "checkout", "temporality": "cumulative"}


def test_only_the_configured_resource_attributes_become_labels() -> None:
    mapping = OtlpMapping(resource_labels=("service.name", "deployment.environment"))
    resource = {**RESOURCE, "deployment.environment": "prod", "k8s.pod.uid": "u-1"}
    decoded = decode_otlp_protobuf(_sdk_request(resource).SerializeToString(), mapping)
    (queue,) = _by_metric(decoded)["queue.depth"]
    assert (queue.source, queue.labels) == (
        "app-01",
        {"service.name": "checkout", "deployment.environment": "prod", "temporality": "cumulative"},
    )


def test_a_resource_without_source_is_rejected_unless_a_default_is_set() -> None:
    body = _sdk_request({"service.name": "checkout", "service.instance.id": ""}).SerializeToString()
    decoded = decode_otlp_protobuf(body)
    assert decoded.samples == []
    ((item, reason, count),) = [(r.item, r.reason, r.count) for r in decoded.rejected]
    assert item == "resource {service.instance.id='', service.name='checkout'}"
    assert reason == (
        "resource has no source attribute (one of host.name, service.instance.id, device.id)"
    )
    assert count == 7  # 2 + 1 + 2 points, and the histogram's 2

    mapping = OtlpMapping(default_source="unknown", resource_labels=())
    decoded = decode_otlp_protobuf(body, mapping)
    assert {s.source for s in decoded.samples} == {"unknown"}
    assert not any("service.name" in s.labels for s in decoded.samples)


# The OTLP JSON encoding as the spec shows it: integers as strings, enums as integers.
SPEC_JSON = {
    "resourceMetrics": [
        {
            "resource": {
                "attributes": [
                    {"key": "device.id", "value": {"stringValue": "dev-1"}},
                    {"key": "service.namespace", "value": {"stringValue": "iot"}},
                    {"key": "os.args", "value": {"arrayValue": {"values": []}}},
                ]
            },
            "scopeMetrics": [
                {
                    "scope": {"name": "sensors", "attributes": [{"key": "x", "value": {}}]},
                    "metrics": [
                        {
                            "name": "battery",
                            "unit": "%",
                            "gauge": {
                                "dataPoints": [
                                    {
                                        "timeUnixNano": str(T0_NS),
                                        "asInt": "97",
                                        "attributes": [
                                            {"key": "cell", "value": {"intValue": "2"}},
                                            {"key": "ok", "value": {"boolValue": True}},
                                            {"key": "v", "value": {"doubleValue": 3.5}},
                                            {"key": "raw", "value": {"bytesValue": "AAE="}},
                                        ],
                                    },
                                    {"timeUnixNano": str(T0_NS), "asDouble": "NaN"},
                                    {"timeUnixNano": str(T0_NS), "asDouble": "-Infinity"},
                                    {"timeUnixNano": str(T0_NS), "asDouble": 1.0, "flags": 1},
                                    {"timeUnixNano": str(T0_NS)},
                                    {"asDouble": 2.5},
                                ]
                            },
                        },
                        {
                            "name": "energy",
                            "sum": {
                                "aggregationTemporality": 1,
                                "isMonotonic": True,
                                "dataPoints": [{"timeUnixNano": T0_NS, "asDouble": 0.5}],
                            },
                        },
                        {
                            "name": "unset",
                            "sum": {"dataPoints": [{"timeUnixNano": T0_NS, "asInt": 1}]},
                        },
                        {
                            "name": "sizes",
                            "summary": {"dataPoints": [{"count": "3"}, {"count": "1"}]},
                        },
                        {
                            "name": "spread",
                            "exponentialHistogram": {"dataPoints": [{"count": "3"}]},
                        },
                    ],
                }
            ],
        }
    ]
}


def test_spec_json_encoding() -> None:
    decoded = decode_otlp_json(json.dumps(SPEC_JSON).encode())
    assert [(s.metric, s.source, s.labels, s.value, s.timestamp_ms) for s in decoded.samples] == [
        (
            "battery",
            "dev-1",
            {"service.namespace": "iot", "cell": "2", "ok": "true", "v": "3.5"},
            97.0,
            T0_MS,
        ),
        ("battery", "dev-1", {"service.namespace": "iot"}, 2.5, None),
        ("energy", "dev-1", {"service.namespace": "iot", "temporality": "delta"}, 0.5, T0_MS),
    ]
    assert decoded.skipped == {
        "nan": 1,
        "infinity": 1,
        "no_recorded_value": 1,
        "non_scalar_attribute": 1,
    }
    assert [(r.item, r.reason, r.count) for r in decoded.rejected] == [
        ("metric 'battery'", "data point has no value", 1),
        ("metric 'unset'", "sum with unspecified aggregation temporality", 1),
        ("metric 'sizes'", "summary data points are not supported", 2),
        ("metric 'spread'", "exponential histogram data points are not supported", 1),
    ]
    # The same request in protobuf decodes to the same thing.
    request = json_format.Parse(json.dumps(SPEC_JSON), ExportMetricsServiceRequest())
    assert decode_otlp_protobuf(request.SerializeToString()) == decoded


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b'{"resourceMetrics": {}}',
        b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"gauge": {"dataPoints": 1}}]}]}]}',
        b'{"resourceMetrics": [' * 20_000,
        b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_malformed_json_is_a_protocol_error(body: bytes) -> None:
    assert decode_otlp_json(b"{}") == Decoded()
    with pytest.raises(ProtocolError, match="not an OTLP/JSON"):
        decode_otlp_json(body)


def test_malformed_protobuf_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="not an OTLP ExportMetricsServiceRequest"):
        decode_otlp_protobuf(b"\x0a\xff\xff\xff\xff\x0f")


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_protocol_error(body: bytes) -> None:
    for decode in (decode_otlp_protobuf, decode_otlp_json):
        try:
            decoded = decode(body)
        except ProtocolError:
            continue
        assert all(math.isfinite(s.value) for s in decoded.samples)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
json_keys = st.sampled_from(
    [
        "resource_metrics",
        "data_points",
        "as_int",
        "time_unix_nano",
        "string_value",
        "resourceMetrics",
        "scopeMetrics",
        "metrics",
        "gauge",
        "sum",
        "dataPoints",
        "asDouble",
        "asInt",
        "timeUnixNano",
        "attributes",
        "key",
        "value",
        "stringValue",
        "resource",
        "name",
    ]
)


@settings(max_examples=300)
@given(st.recursive(json_values, lambda inner: st.dictionaries(json_keys, inner), max_leaves=20))
def test_random_json_only_raises_protocol_error(document: Any) -> None:
    with contextlib.suppress(ProtocolError):
        decode_otlp_json(json.dumps(document).encode())
