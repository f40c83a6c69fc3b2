"""OTLP/HTTP metrics (``ExportMetricsServiceRequest``), protobuf or JSON, to samples.

The mapping onto samples is ``otlp_mapping``'s (its docstring states it), the protobuf reader
``otlp_wire``'s; this module reads the JSON encoding and is where the routes find both.

The JSON path reads the OTLP JSON encoding (lowerCamelCase keys, 64-bit integers as strings
or numbers, enums as integers or their names) with msgspec; measured on a 1,000-point export
it is ~20x faster than protobuf's ``json_format.Parse`` into the generated classes, which
is kept for bodies written with the .proto's snake_case names.
"""

from __future__ import annotations

from typing import Final

import msgspec
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from ingest_producer.protocols.otlp_mapping import (
    DEFAULT_MAPPING,
    REFUSED_KINDS,
    TEMPORALITIES,
    Collector,
    OtlpMapping,
    Series,
)
from ingest_producer.protocols.otlp_wire import decode_otlp_protobuf
from ingest_producer.protocols.result import Decoded, ProtocolError
from ingest_shared.schema import Base

__all__ = ["DEFAULT_MAPPING", "OtlpMapping", "decode_otlp_json", "decode_otlp_protobuf"]


def decode_otlp_json(body: bytes, mapping: OtlpMapping = DEFAULT_MAPPING) -> Decoded:
    """Decode an ``application/json`` OTLP metrics export (already gunzipped).

    Raises ``ProtocolError`` when the body is not JSON of an ExportMetricsServiceRequest.
    """
    try:
        request = _JSON_DECODER.decode(body)
    except (msgspec.MsgspecError, RecursionError) as error:
        msg = f"body is not an OTLP/JSON ExportMetricsServiceRequest: {error}"
        raise ProtocolError(msg) from None
    out = Collector(mapping)
    for resource_metrics in request.resource_metrics:
        resource = resource_metrics.resource
        attributes = _json_resource(resource.attributes if resource else [], out.wanted)
        metrics = [m for scope in resource_metrics.scope_metrics for m in scope.metrics]
        source, base = out.resource(attributes)
        if source is None:
            out.no_source(attributes, sum(m.point_count() for m in metrics))
            continue
        for metric in metrics:
            if metric.gauge is not None:
                series = Series(metric.name, source, base, None)
                _json_points(out, series, metric.gauge.data_points)
            elif metric.sum is not None:
                temporality = TEMPORALITIES.get(metric.sum.aggregation_temporality)
                points = metric.sum.data_points
                if temporality is None:
                    out.unspecified_temporality(metric.name, len(points))
                else:
                    _json_points(out, Series(metric.name, source, base, temporality), points)
            else:
                for kind in REFUSED_KINDS:
                    refused: _JsonRefused | None = getattr(metric, kind)
                    if refused is not None:
                        out.refuse_kind(metric.name, kind, len(refused.data_points))
                        break
    decoded = out.finish()
    if not (decoded.samples or decoded.rejected) and any(k in body for k in _SNAKE_CASE_KEYS):
        return _decode_proto_named_json(body, mapping)
    return decoded


# --- JSON -----------------------------------------------------------------------------------
# The OTLP JSON encoding, as far as it is read: msgspec ignores every other key. strict=False
# lets 64-bit integers come as strings (the protobuf JSON mapping) and doubles as "NaN" or
# "Infinity"; array, kvlist and bytes values are unknown keys here, so non-scalar.


class _JsonAnyValue(Base, rename="camel"):
    string_value: str | None = None
    bool_value: bool | None = None
    int_value: int | None = None
    double_value: float | None = None

    def text(self) -> str | None:
        if self.string_value is not None:
            return self.string_value
        if self.int_value is not None:
            return str(self.int_value)
        if self.bool_value is not None:
            return "true" if self.bool_value else "false"
        if self.double_value is not None:
            return repr(self.double_value)
        return None


class _JsonKeyValue(Base):
    key: str = ""
    value: _JsonAnyValue | None = None


class _JsonResource(Base):
    attributes: list[_JsonKeyValue] = msgspec.field(default_factory=list)


class _JsonPoint(Base, rename="camel"):
    attributes: list[_JsonKeyValue] = msgspec.field(default_factory=list)
    time_unix_nano: int = 0
    as_double: float | None = None
    as_int: int | None = None
    flags: int = 0


class _JsonGauge(Base, rename="camel"):
    data_points: list[_JsonPoint] = msgspec.field(default_factory=list)


class _JsonSum(Base, rename="camel"):
    data_points: list[_JsonPoint] = msgspec.field(default_factory=list)
    aggregation_temporality: int | str = 0


class _JsonRefused(Base, rename="camel"):
    # Only counted: each point stays raw JSON, never built.
    data_points: list[msgspec.Raw] = msgspec.field(default_factory=list)


class _JsonMetric(Base, rename="camel"):
    name: str = ""
    gauge: _JsonGauge | None = None
    sum: _JsonSum | None = None
    histogram: _JsonRefused | None = None
    exponential_histogram: _JsonRefused | None = None
    summary: _JsonRefused | None = None

    def point_count(self) -> int:
        for data in (self.gauge, self.sum, self.histogram, self.exponential_histogram):
            if data is not None:
                return len(data.data_points)
        return len(self.summary.data_points) if self.summary is not None else 0


class _JsonScopeMetrics(Base):
    metrics: list[_JsonMetric] = msgspec.field(default_factory=list)


class _JsonResourceMetrics(Base, rename="camel"):
    resource: _JsonResource | None = None
    scope_metrics: list[_JsonScopeMetrics] = msgspec.field(default_factory=list)


class _JsonRequest(Base, rename="camel"):
    resource_metrics: list[_JsonResourceMetrics] = msgspec.field(default_factory=list)


_JSON_DECODER: Final = msgspec.json.Decoder(_JsonRequest, strict=False)
# The OTLP spec asks for lowerCamelCase keys, but protobuf's JSON parsers also take the
# .proto names and some senders write them; msgspec would ignore them as unknown and lose
# every point without a word. A body in which msgspec found nothing and that has them goes
# through protobuf's own (~20x slower) parser; checked only then, as a scan of every body
# cost a quarter of the decoding.
_SNAKE_CASE_KEYS: Final = (b'"resource_metrics"', b'"scope_metrics"', b'"data_points"')


def _decode_proto_named_json(body: bytes, mapping: OtlpMapping) -> Decoded:
    request = ExportMetricsServiceRequest()
    try:
        json_format.Parse(body, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, RecursionError) as error:
        msg = f"body is not an OTLP/JSON ExportMetricsServiceRequest: {error}"
        raise ProtocolError(msg) from None
    # Re-encoded for the protobuf reader: a rare path, where one reader beats speed.
    return decode_otlp_protobuf(request.SerializeToString(), mapping)


def _json_points(out: Collector, series: Series, points: list[_JsonPoint]) -> None:
    no_value = 0
    for point in points:
        if point.as_double is not None:
            value = point.as_double
        elif point.as_int is not None:
            value = float(point.as_int)
        else:
            no_value += 1
            continue
        attributes = _json_attributes(point.attributes, out)
        out.point(series, attributes, value, point.flags, point.time_unix_nano)
    if no_value:
        out.no_value(series.metric, no_value)


def _json_resource(attributes: list[_JsonKeyValue], wanted: frozenset[str]) -> dict[str, str]:
    """The scalar values of the wanted resource attributes (the others are never looked at)."""
    found: dict[str, str] = {}
    for attribute in attributes:
        if attribute.key in wanted and attribute.value is not None:
            text = attribute.value.text()
            if text is not None:
                found[attribute.key] = text
    return found


def _json_attributes(attributes: list[_JsonKeyValue], out: Collector) -> dict[str, str]:
    labels: dict[str, str] = {}
    for attribute in attributes:
        text = attribute.value.text() if attribute.value is not None else None
        if text is None:
            out.non_scalar += 1
        else:
            labels[attribute.key] = text
    return labels
