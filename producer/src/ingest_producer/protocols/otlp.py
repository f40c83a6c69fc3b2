"""OTLP/HTTP metrics (``ExportMetricsServiceRequest``), protobuf or JSON, to samples.

Mapping (``OtlpMapping``):

- source: the first of ``source_attributes`` (default ``host.name``, ``service.instance.id``,
  ``device.id``) that the resource has as a non-empty scalar; none -> every point of that
  resource is rejected, unless ``default_source`` is set.
- labels: the resource attributes named in ``resource_labels`` (default ``service.name``,
  ``service.namespace``, ``service.instance.id``; the one chosen as source excluded), so two
  services or two processes on one host never fold into one series; then every data point
  attribute (a point attribute wins over a resource one). Other resource attributes and all
  scope attributes are dropped: they describe the SDK and the library, and taking them all
  would leave the label count unbounded. Note that recent SDKs generate a random
  ``service.instance.id`` per process start, so with ``host.name`` as source a restart starts
  new series; leave it out of ``resource_labels`` where that matters more than folding.
  Attribute values become strings (``true``/``false``, decimal integers, ``repr`` of doubles);
  array, kvlist and bytes point attributes are dropped and counted as
  ``non_scalar_attribute``.
- Gauge points are samples as they are. Sum points carry the label ``temporality`` =
  ``delta`` or ``cumulative`` (overriding an attribute of that name), so a delta and a
  cumulative series of one name never mix and cumulative counters are never averaged as
  gauges; a Sum with unspecified temporality is rejected.
- Histogram, exponential histogram and summary points are rejected per metric with their
  point count (the route reports the total as ``partial_success.rejected_data_points``).
- NaN and +-Inf values and points flagged "no recorded value" are skipped and counted; a
  point with no value at all is rejected. ``time_unix_nano`` becomes ms (0 -> None, the time
  of receipt).

The JSON path reads the OTLP JSON encoding (lowerCamelCase keys, 64-bit integers as strings
or numbers, enums as integers or their names) with msgspec; measured on a 1,000-point export
it is ~20x faster than protobuf's ``json_format.Parse`` into the generated classes, which
is kept for bodies written with the .proto's snake_case names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from ingest_producer.protocols.result import (
    CUMULATIVE,
    DELTA,
    SKIP_INFINITY,
    SKIP_NAN,
    SKIP_NO_RECORDED_VALUE,
    SKIP_NON_SCALAR_ATTRIBUTE,
    TEMPORALITY_LABEL,
    Decoded,
    ProtocolError,
    ProtocolSample,
    Rejected,
)
from ingest_shared.schema import Base

if TYPE_CHECKING:
    from collections.abc import Iterable

    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, NumberDataPoint

_MAX_FLOAT: Final = 1.7976931348623157e308
_NS_PER_MS: Final = 1_000_000
_FLAG_NO_RECORDED_VALUE: Final = 1
# AggregationTemporality: 1 = DELTA, 2 = CUMULATIVE (0, unspecified, is invalid for a Sum).
_TEMPORALITIES: Final[dict[int | str, str]] = {
    1: DELTA,
    2: CUMULATIVE,
    "1": DELTA,
    "2": CUMULATIVE,
    "AGGREGATION_TEMPORALITY_DELTA": DELTA,
    "AGGREGATION_TEMPORALITY_CUMULATIVE": CUMULATIVE,
}
_REFUSED_KINDS: Final = {
    "histogram": "histogram",
    "exponential_histogram": "exponential histogram",
    "summary": "summary",
}
_DESCRIPTION_MAX: Final = 200


@dataclass(frozen=True, slots=True)
class OtlpMapping:
    """Which resource attributes name the source and which become labels."""

    source_attributes: tuple[str, ...] = ("host.name", "service.instance.id", "device.id")
    resource_labels: tuple[str, ...] = ("service.name", "service.namespace", "service.instance.id")
    default_source: str | None = None


DEFAULT_MAPPING: Final = OtlpMapping()


def decode_otlp_protobuf(body: bytes, mapping: OtlpMapping = DEFAULT_MAPPING) -> Decoded:
    """Decode an ``application/x-protobuf`` OTLP metrics export (already gunzipped).

    Raises ``ProtocolError`` when the body is not an ExportMetricsServiceRequest.
    """
    request = ExportMetricsServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as error:
        msg = f"body is not an OTLP ExportMetricsServiceRequest: {error}"
        raise ProtocolError(msg) from None
    return _walk_protobuf(request, mapping)


def _walk_protobuf(request: ExportMetricsServiceRequest, mapping: OtlpMapping) -> Decoded:
    out = _Collector(mapping)
    for resource_metrics in request.resource_metrics:
        attributes = _pb_resource(resource_metrics.resource.attributes, out.wanted)
        metrics = [m for scope in resource_metrics.scope_metrics for m in scope.metrics]
        source, base = out.resource(attributes)
        if source is None:
            out.no_source(attributes, sum(_pb_point_count(metric) for metric in metrics))
            continue
        for metric in metrics:
            kind = metric.WhichOneof("data")
            if kind == "gauge":
                series = _Series(metric.name, source, base, None)
                _pb_points(out, series, metric.gauge.data_points)
            elif kind == "sum":
                temporality = _TEMPORALITIES.get(metric.sum.aggregation_temporality)
                points = metric.sum.data_points
                if temporality is None:
                    out.unspecified_temporality(metric.name, len(points))
                else:
                    _pb_points(out, _Series(metric.name, source, base, temporality), points)
            elif kind is not None:
                out.refuse_kind(metric.name, kind, len(getattr(metric, kind).data_points))
    return out.finish()


def decode_otlp_json(body: bytes, mapping: OtlpMapping = DEFAULT_MAPPING) -> Decoded:
    """Decode an ``application/json`` OTLP metrics export (already gunzipped).

    Raises ``ProtocolError`` when the body is not JSON of an ExportMetricsServiceRequest.
    """
    try:
        request = _JSON_DECODER.decode(body)
    except (msgspec.MsgspecError, RecursionError) as error:
        msg = f"body is not an OTLP/JSON ExportMetricsServiceRequest: {error}"
        raise ProtocolError(msg) from None
    out = _Collector(mapping)
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
                series = _Series(metric.name, source, base, None)
                _json_points(out, series, metric.gauge.data_points)
            elif metric.sum is not None:
                temporality = _TEMPORALITIES.get(metric.sum.aggregation_temporality)
                points = metric.sum.data_points
                if temporality is None:
                    out.unspecified_temporality(metric.name, len(points))
                else:
                    _json_points(out, _Series(metric.name, source, base, temporality), points)
            else:
                for kind in _REFUSED_KINDS:
                    refused: _JsonRefused | None = getattr(metric, kind)
                    if refused is not None:
                        out.refuse_kind(metric.name, kind, len(refused.data_points))
                        break
    decoded = out.finish()
    if not (decoded.samples or decoded.rejected) and any(k in body for k in _SNAKE_CASE_KEYS):
        return _decode_proto_named_json(body, mapping)
    return decoded


class _Series(NamedTuple):
    """What the points of one metric of one resource share."""

    metric: str
    source: str
    base: dict[str, str]
    temporality: str | None

    def labels(self, attributes: dict[str, str]) -> dict[str, str]:
        if not self.base and self.temporality is None:
            return attributes
        labels = {**self.base, **attributes}
        if self.temporality is not None:
            labels[TEMPORALITY_LABEL] = self.temporality
        return labels


class _Collector:
    """What one request decodes to, built up by either encoding's walker."""

    def __init__(self, mapping: OtlpMapping) -> None:
        self.mapping = mapping
        # The resource attributes ever read: bounded by the mapping's size.
        self.labels = frozenset(mapping.resource_labels)
        self.wanted = self.labels | frozenset(mapping.source_attributes)
        self.result = Decoded()
        self.nan = self.infinite = self.no_recorded_value = self.non_scalar = 0

    def resource(self, attributes: dict[str, str]) -> tuple[str | None, dict[str, str]]:
        """The source and the labels every point of a resource carries, from its wanted
        attributes."""
        chosen, source = "", self.mapping.default_source
        for name in self.mapping.source_attributes:
            if attributes.get(name):
                chosen, source = name, attributes[name]
                break
        labels = {
            key: value for key, value in attributes.items() if key in self.labels and key != chosen
        }
        return source, labels

    def point(
        self, series: _Series, attributes: dict[str, str], value: float, flags: int, time_ns: int
    ) -> None:
        if flags & _FLAG_NO_RECORDED_VALUE or not -_MAX_FLOAT <= value <= _MAX_FLOAT:
            self.unusable(value, flags)
        else:
            timestamp_ms = time_ns // _NS_PER_MS if time_ns else None
            labels = series.labels(attributes)
            sample = ProtocolSample(series.metric, series.source, labels, value, timestamp_ms)
            self.result.samples.append(sample)

    def unusable(self, value: float, flags: int) -> None:
        """Count a point that has no usable value: no recorded value, NaN or infinite."""
        if flags & _FLAG_NO_RECORDED_VALUE:
            self.no_recorded_value += 1
        elif math.isinf(value):
            self.infinite += 1
        else:
            self.nan += 1

    def no_source(self, attributes: dict[str, str], count: int) -> None:
        if count:
            wanted = ", ".join(self.mapping.source_attributes)
            reason = f"resource has no source attribute (one of {wanted})"
            self.refuse(f"resource {_describe(attributes)}", reason, count)

    def no_value(self, metric: str, count: int) -> None:
        self.refuse(f"metric {metric!r}", "data point has no value", count)

    def unspecified_temporality(self, metric: str, count: int) -> None:
        if count:
            self.refuse(f"metric {metric!r}", "sum with unspecified aggregation temporality", count)

    def refuse_kind(self, metric: str, kind: str, count: int) -> None:
        if count:
            what = _REFUSED_KINDS[kind]
            self.refuse(f"metric {metric!r}", f"{what} data points are not supported", count)

    def refuse(self, item: str, reason: str, count: int) -> None:
        self.result.rejected.append(Rejected(item[:_DESCRIPTION_MAX], reason, count))

    def finish(self) -> Decoded:
        skipped = self.result.skipped
        for reason, count in (
            (SKIP_NAN, self.nan),
            (SKIP_INFINITY, self.infinite),
            (SKIP_NO_RECORDED_VALUE, self.no_recorded_value),
            (SKIP_NON_SCALAR_ATTRIBUTE, self.non_scalar),
        ):
            if count:
                skipped[reason] = count
        return self.result


def _describe(attributes: dict[str, str]) -> str:
    return "{" + ", ".join(f"{name}={value!r}" for name, value in attributes.items()) + "}"


# --- protobuf -------------------------------------------------------------------------------


def _pb_points(out: _Collector, series: _Series, points: Iterable[NumberDataPoint]) -> None:
    no_value = 0
    append = out.result.samples.append
    metric, source = series.metric, series.source
    for point in points:
        which = point.WhichOneof("value")
        if which == "as_double":
            value = point.as_double
        elif which == "as_int":
            value = float(point.as_int)
        else:
            no_value += 1
            continue
        if point.flags & _FLAG_NO_RECORDED_VALUE or not -_MAX_FLOAT <= value <= _MAX_FLOAT:
            out.unusable(value, point.flags)
            continue
        labels = series.labels(_pb_attributes(point.attributes, out))
        time_ns = point.time_unix_nano
        timestamp_ms = time_ns // _NS_PER_MS if time_ns else None
        append(ProtocolSample(metric, source, labels, value, timestamp_ms))
    if no_value:
        out.no_value(metric, no_value)


def _pb_resource(attributes: Iterable[KeyValue], wanted: frozenset[str]) -> dict[str, str]:
    """The scalar values of the wanted resource attributes (the others are never looked at)."""
    found: dict[str, str] = {}
    for attribute in attributes:
        if attribute.key in wanted:
            text = _pb_scalar(attribute.value)
            if text is not None:
                found[attribute.key] = text
    return found


def _pb_point_count(metric: Metric) -> int:
    kind = metric.WhichOneof("data")
    return 0 if kind is None else len(getattr(metric, kind).data_points)


def _pb_attributes(attributes: Iterable[KeyValue], out: _Collector) -> dict[str, str]:
    labels: dict[str, str] = {}
    for attribute in attributes:
        # A non-empty string is taken without WhichOneof: attributes are most of this path's
        # time, and that saves ~20% of it.
        text: str | None = attribute.value.string_value or _pb_scalar(attribute.value)
        if text is None:
            out.non_scalar += 1
        else:
            labels[attribute.key] = text
    return labels


def _pb_scalar(value: AnyValue) -> str | None:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "double_value":
        return repr(value.double_value)
    return None


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
    return _walk_protobuf(request, mapping)


def _json_points(out: _Collector, series: _Series, points: list[_JsonPoint]) -> None:
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


def _json_attributes(attributes: list[_JsonKeyValue], out: _Collector) -> dict[str, str]:
    labels: dict[str, str] = {}
    for attribute in attributes:
        text = attribute.value.text() if attribute.value is not None else None
        if text is None:
            out.non_scalar += 1
        else:
            labels[attribute.key] = text
    return labels
