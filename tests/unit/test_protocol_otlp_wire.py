"""The hand-written OTLP protobuf reader against upb, the reference.

Random ExportMetricsServiceRequests are built with the generated classes, encoded by upb and
re-encoded as protobuf allows any writer to (fields in any order, a message field split into
occurrences that merge, values given twice with the last one winning, unknown fields and
known numbers of the wrong wire type, which are unknown fields too); upb parses the same
bytes and the walk below (what the decoder did before it read the wire itself) maps them.
Both must decode to exactly the same samples, refusals and skipped counts.
"""

from __future__ import annotations

import contextlib
import math
import struct
import tracemalloc
from typing import TYPE_CHECKING, Any

import pytest
from bench.protocol_payloads import otlp_export
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.wrappers_pb2 import UInt64Value
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Exemplar,
    ExponentialHistogramDataPoint,
    Gauge,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
    SummaryDataPoint,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from ingest_producer.protocols import Decoded, ProtocolError
from ingest_producer.protocols.otlp import decode_otlp_protobuf
from ingest_producer.protocols.otlp_mapping import (
    DEFAULT_MAPPING,
    FLAG_NO_RECORDED_VALUE,
    MAX_FLOAT,
    NS_PER_MS,
    TEMPORALITIES,
    Collector,
    OtlpMapping,
    Series,
)
from ingest_producer.protocols.result import ProtocolSample

if TYPE_CHECKING:
    from collections.abc import Iterable

    from google.protobuf.message import Message

# --- the reference: upb's messages, walked ----------------------------------------------------


def upb_decode(body: bytes, mapping: OtlpMapping = DEFAULT_MAPPING) -> Decoded:
    """``body`` parsed by upb and mapped by walking its messages (DecodeError propagates)."""
    request = ExportMetricsServiceRequest.FromString(body)
    out = Collector(mapping)
    for resource_metrics in request.resource_metrics:
        attributes: dict[str, str] = {}
        for attribute in resource_metrics.resource.attributes:
            text = _scalar(attribute.value)
            if attribute.key in out.wanted and text is not None:
                attributes[attribute.key] = text
        metrics = [m for scope in resource_metrics.scope_metrics for m in scope.metrics]
        source, base = out.resource(attributes)
        if source is None:
            out.no_source(attributes, sum(_point_count(metric) for metric in metrics))
            continue
        for metric in metrics:
            kind = metric.WhichOneof("data")
            if kind == "gauge":
                _points(out, Series(metric.name, source, base, None), metric.gauge.data_points)
            elif kind == "sum":
                temporality = TEMPORALITIES.get(metric.sum.aggregation_temporality)
                points = metric.sum.data_points
                if temporality is None:
                    out.unspecified_temporality(metric.name, len(points))
                else:
                    _points(out, Series(metric.name, source, base, temporality), points)
            elif kind is not None:
                out.refuse_kind(metric.name, kind, _point_count(metric))
    return out.finish()


def _point_count(metric: Metric) -> int:
    kind = metric.WhichOneof("data")
    return 0 if kind is None else len(getattr(metric, kind).data_points)


def _points(out: Collector, series: Series, points: Iterable[NumberDataPoint]) -> None:
    no_value = 0
    for point in points:
        which = point.WhichOneof("value")
        if which is None:
            no_value += 1
            continue
        value = point.as_double if which == "as_double" else float(point.as_int)
        if point.flags & FLAG_NO_RECORDED_VALUE or not -MAX_FLOAT <= value <= MAX_FLOAT:
            out.unusable(value, point.flags)
            continue
        attributes: dict[str, str] = {}
        for attribute in point.attributes:
            text = _scalar(attribute.value)
            if text is None:
                out.non_scalar += 1
            else:
                attributes[attribute.key] = text
        time_ns = point.time_unix_nano
        timestamp_ms = time_ns // NS_PER_MS if time_ns else None
        sample = ProtocolSample(
            series.metric, series.source, series.labels(attributes), value, timestamp_ms
        )
        out.result.samples.append(sample)
    if no_value:
        out.no_value(series.metric, no_value)


def _scalar(value: AnyValue) -> str | None:
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


# --- random requests, built with the generated classes ----------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
TEXT = st.sampled_from(["", "a", "host-1", "checkout", "é"]) | st.text(max_size=4)
SOURCE_KEYS = st.sampled_from(["host.name", "service.instance.id", "device.id"])
HOSTS = st.sampled_from(["host-1", "host-2", "é"])
KEYS = st.sampled_from(
    [
        "host.name",
        "service.instance.id",
        "device.id",
        "service.name",
        "service.namespace",
        "temporality",
        "state",
        "",
    ]
)
SCALARS = st.one_of(
    st.builds(lambda text: AnyValue(string_value=text), TEXT),
    st.builds(lambda flag: AnyValue(bool_value=flag), st.booleans()),
    st.builds(lambda number: AnyValue(int_value=number), INT64),
    st.builds(lambda number: AnyValue(double_value=number), st.floats()),
)
ANY_VALUES = st.one_of(
    SCALARS,
    st.just(AnyValue()),
    st.builds(lambda raw: AnyValue(bytes_value=raw), st.binary(max_size=3)),
    st.builds(
        lambda items: AnyValue(array_value=ArrayValue(values=items)), st.lists(SCALARS, max_size=2)
    ),
    st.builds(
        lambda key, item: AnyValue(
            kvlist_value=KeyValueList(values=[KeyValue(key=key, value=item)])
        ),
        KEYS,
        SCALARS,
    ),
    st.builds(lambda index: AnyValue(string_value_strindex=index), st.integers(0, 3)),
)
KEY_VALUES = st.builds(
    lambda key, value: KeyValue(key=key, value=value), KEYS, ANY_VALUES
) | st.builds(lambda key: KeyValue(key=key), KEYS)
TIMES = (
    st.sampled_from([0, 1, NS_PER_MS - 1, NS_PER_MS, 1_773_923_696_789_123_456, 2**64 - 1]) | UINT64
)
# Unspecified, delta, cumulative, and values no SDK sends (an open enum keeps them).
TEMPORALITY_VALUES = st.sampled_from(
    [AggregationTemporality.ValueType(n) for n in (0, 1, 2, 1, 2, 3, 5, -1)]
)
FLAGS = st.sampled_from([0, 0, 0, 0, 1, 2, 3, 2**32 - 1])


@st.composite
def number_points(draw: st.DrawFn, attribute_sets: list[list[KeyValue]]) -> NumberDataPoint:
    # Points of one request often repeat an attribute set: the reader reads each set once.
    attributes = draw(st.sampled_from(attribute_sets) | st.lists(KEY_VALUES, max_size=3))
    point = NumberDataPoint(attributes=attributes, time_unix_nano=draw(TIMES), flags=draw(FLAGS))
    if draw(st.booleans()):
        point.start_time_unix_nano = draw(TIMES)
    value = draw(st.sampled_from(["as_double", "as_double", "as_int", None]))
    if value == "as_double":
        point.as_double = draw(st.floats() | st.sampled_from([0.0, -0.0, math.nan, math.inf]))
    elif value == "as_int":
        point.as_int = draw(INT64)
    if draw(st.integers(0, 5)) == 0:
        point.exemplars.append(Exemplar(filtered_attributes=draw(st.lists(KEY_VALUES, max_size=2))))
    return point


@st.composite
def metrics(draw: st.DrawFn, attribute_sets: list[list[KeyValue]]) -> Metric:
    metric = Metric(name=draw(TEXT), description=draw(TEXT), unit=draw(TEXT))
    kind = draw(st.sampled_from(["gauge", "sum", "sum", "histogram", "exp", "summary", None]))
    count = draw(st.integers(0, 4))
    if kind in ("gauge", "sum"):
        points = [draw(number_points(attribute_sets)) for _ in range(count)]
        data = metric.gauge if kind == "gauge" else metric.sum
        data.SetInParent()
        data.data_points.extend(points)
        if kind == "sum":
            metric.sum.aggregation_temporality = draw(TEMPORALITY_VALUES)
            metric.sum.is_monotonic = draw(st.booleans())
    elif kind == "histogram":
        metric.histogram.SetInParent()
        metric.histogram.data_points.extend(HistogramDataPoint(count=n) for n in range(count))
    elif kind == "exp":
        metric.exponential_histogram.SetInParent()
        spread = (ExponentialHistogramDataPoint(count=n) for n in range(count))
        metric.exponential_histogram.data_points.extend(spread)
    elif kind == "summary":
        metric.summary.SetInParent()
        metric.summary.data_points.extend(SummaryDataPoint(count=n) for n in range(count))
    return metric


@st.composite
def requests(draw: st.DrawFn) -> ExportMetricsServiceRequest:
    attribute_sets = draw(st.lists(st.lists(KEY_VALUES, max_size=3), min_size=1, max_size=2))
    request = ExportMetricsServiceRequest()
    for _ in range(draw(st.integers(1, 3))):
        resource_metrics = ResourceMetrics(schema_url=draw(TEXT))
        if draw(st.integers(0, 4)):
            attributes = draw(st.lists(KEY_VALUES, max_size=4))
            if draw(st.integers(0, 3)):  # mostly with a source
                source = KeyValue(key=draw(SOURCE_KEYS), value=AnyValue(string_value=draw(HOSTS)))
                attributes.insert(draw(st.integers(0, len(attributes))), source)
            resource_metrics.resource.attributes.extend(attributes)
        for _ in range(draw(st.integers(0, 2) | st.just(1))):
            scope = InstrumentationScope(
                name=draw(TEXT), attributes=draw(st.lists(KEY_VALUES, max_size=1))
            )
            found = draw(st.lists(metrics(attribute_sets), min_size=1, max_size=3))
            resource_metrics.scope_metrics.append(ScopeMetrics(scope=scope, metrics=found))
        request.resource_metrics.append(resource_metrics)
    return request


# --- re-encoding as any protobuf writer may --------------------------------------------------

_WIRE_TYPES = {
    FieldDescriptor.TYPE_DOUBLE: 1,
    FieldDescriptor.TYPE_FIXED64: 1,
    FieldDescriptor.TYPE_SFIXED64: 1,
    FieldDescriptor.TYPE_FLOAT: 5,
    FieldDescriptor.TYPE_FIXED32: 5,
    FieldDescriptor.TYPE_SFIXED32: 5,
    FieldDescriptor.TYPE_STRING: 2,
    FieldDescriptor.TYPE_BYTES: 2,
    FieldDescriptor.TYPE_MESSAGE: 2,
}
UNKNOWN_NUMBERS = st.integers(20, 40)  # no OTLP message uses these


def _varint(value: int) -> bytes:
    # protobuf's own encoding: a UInt64Value is its field 1's tag (one byte), then the varint.
    return UInt64Value(value=value).SerializeToString()[1:] or b"\x00"


def _field(number: int, wire: int, payload: bytes) -> bytes:
    if wire == 2:
        payload = _varint(len(payload)) + payload
    return _varint(number << 3 | wire) + payload


@st.composite
def _payloads(draw: st.DrawFn, wire: int) -> bytes:
    if wire == 0:
        return _varint(draw(UINT64))
    if wire == 1:
        return draw(st.binary(min_size=8, max_size=8))
    if wire == 5:
        return draw(st.binary(min_size=4, max_size=4))
    if wire == 3:  # a group: one varint field inside, then its end (added by the caller)
        return _field(draw(UNKNOWN_NUMBERS), 0, _varint(draw(UINT64)))
    return draw(st.text(max_size=3)).encode()


@st.composite
def _unknown_field(draw: st.DrawFn, message: Message) -> bytes:
    """A field upb does not know: a number no OTLP message uses, or a known number with
    another wire type (a group only for the former)."""
    # Not a repeated scalar: upb reads those packed and unpacked alike.
    known = [
        field.number
        for field in message.DESCRIPTOR.fields
        if not field.is_repeated or field.type == FieldDescriptor.TYPE_MESSAGE
    ]
    number = draw(UNKNOWN_NUMBERS | st.sampled_from(known))
    if number in known:
        field = message.DESCRIPTOR.fields_by_number[number]
        wire = draw(st.sampled_from([w for w in (0, 1, 2, 5) if w != _wire_type(field)]))
    else:
        wire = draw(st.sampled_from([0, 1, 2, 5, 3]))
    if wire == 3:
        return _field(number, 3, draw(_payloads(3))) + _varint(number << 3 | 4)
    return _field(number, wire, draw(_payloads(wire)))


def _wire_type(field: Any) -> int:  # a FieldDescriptor (upb's or the pure one)
    return _WIRE_TYPES.get(field.type, 0)


def _scalar_piece(message: Message, field: FieldDescriptor, value: Any) -> bytes:
    """One scalar field as upb encodes it (repeated ones whole, packed)."""
    alone = type(message)()
    if field.is_repeated:
        getattr(alone, field.name).extend(value)
    else:
        setattr(alone, field.name, value)
    return alone.SerializeToString()


@st.composite
def _shadow(draw: st.DrawFn, message: Message, field: FieldDescriptor) -> bytes:
    """An earlier occurrence that the real one overrides, or merges with: the same field, or
    another case of its oneof, with a random value; a message field's is the real one's (it
    merges into the real one) or empty."""
    oneof = field.containing_oneof
    chosen = draw(st.sampled_from(list(oneof.fields))) if oneof is not None else field
    wire = _wire_type(chosen)
    if chosen.type == FieldDescriptor.TYPE_MESSAGE:
        same = chosen is field and draw(st.booleans())
        return _field(
            chosen.number, 2, getattr(message, field.name).SerializeToString() if same else b""
        )
    return _field(chosen.number, wire, draw(_payloads(wire)))


@st.composite
def encodings(draw: st.DrawFn, message: Message) -> bytes:
    """``message`` encoded as any protobuf writer may."""
    return b"".join(draw(_pieces(message)))


@st.composite
def _pieces(draw: st.DrawFn, message: Message) -> list[bytes]:
    # Each field's occurrences, in order; fields are then interleaved at random.
    queues: list[list[bytes]] = []
    for field, value in message.ListFields():
        repeated = field.is_repeated
        queue: list[bytes] = []
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value if repeated else [value]:
                pieces = draw(_pieces(item))
                cut = draw(st.integers(0, len(pieces))) if not repeated else len(pieces)
                if not repeated and draw(st.booleans()) and 0 < cut < len(pieces):
                    # Split in two occurrences: upb merges them into one message.
                    queue.append(_field(field.number, 2, b"".join(pieces[:cut])))
                    queue.append(_field(field.number, 2, b"".join(pieces[cut:])))
                else:
                    queue.append(_field(field.number, 2, b"".join(pieces)))
        else:
            queue.append(_scalar_piece(message, field, value))
        if not repeated and draw(st.integers(0, 3)) == 0:
            queue.insert(0, draw(_shadow(message, field)))
        queues.append(queue)
    if draw(st.integers(0, 3)) == 0:
        queues.append([draw(_unknown_field(message))])
    order = draw(st.permutations([i for i, queue in enumerate(queues) for _ in queue]))
    return [queues[i].pop(0) for i in order]


# --- the properties ----------------------------------------------------------------------------

MAPPINGS = st.sampled_from(
    [
        DEFAULT_MAPPING,
        OtlpMapping(default_source="unknown"),
        OtlpMapping(source_attributes=("device.id",), resource_labels=("service.name", "state")),
    ]
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), MAPPINGS)
def test_upb_encoded_requests_decode_as_upb_reads_them(
    request: ExportMetricsServiceRequest, mapping: OtlpMapping
) -> None:
    body = request.SerializeToString()
    assert decode_otlp_protobuf(body, mapping) == upb_decode(body, mapping)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), MAPPINGS)
def test_any_valid_encoding_decodes_as_upb_reads_it(
    data: st.DataObject, mapping: OtlpMapping
) -> None:
    body = data.draw(encodings(data.draw(requests())))
    assert decode_otlp_protobuf(body, mapping) == upb_decode(body, mapping)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_truncated_bodies_are_a_protocol_error_unless_upb_reads_them(data: st.DataObject) -> None:
    body = data.draw(encodings(data.draw(requests())))
    cut = body[: data.draw(st.integers(0, max(0, len(body) - 1)))]
    try:
        expected = upb_decode(cut)
    except DecodeError:
        with pytest.raises(ProtocolError, match="not an OTLP ExportMetricsServiceRequest"):
            decode_otlp_protobuf(cut)
    else:
        assert decode_otlp_protobuf(cut) == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corrupted_bodies_decode_as_upb_reads_them_or_are_a_protocol_error(
    data: st.DataObject,
) -> None:
    body = bytearray(data.draw(encodings(data.draw(requests()))))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(body)))
        body[at:at] = data.draw(st.binary(max_size=2))  # insert
        if body and data.draw(st.booleans()):
            at = data.draw(st.integers(0, len(body) - 1))
            body[at] = data.draw(st.integers(0, 255))  # overwrite
    _check_against_upb(bytes(body))


T0_NS = 1_773_923_696_789_123_456
HOST = ResourceMetrics(
    resource=Resource(attributes=[KeyValue(key="host.name", value=AnyValue(string_value="h"))])
).SerializeToString()


def _request_of(metric: bytes) -> bytes:
    """A request of one resource (host.name "h") with one metric, as encoded."""
    scope = _field(2, 2, metric)  # ScopeMetrics.metrics
    return _field(1, 2, HOST + _field(2, 2, scope))  # resource_metrics, its scope_metrics


def _point(value: float, state: str) -> NumberDataPoint:
    attributes = [KeyValue(key="state", value=AnyValue(string_value=state))]
    return NumberDataPoint(as_double=value, time_unix_nano=T0_NS, attributes=attributes)


DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
DELTA_SUM = Metric(sum=Sum(data_points=[_point(1.0, "sum")], aggregation_temporality=DELTA))
GAUGE_1 = Metric(name="g", gauge=Gauge(data_points=[_point(2.0, "first")]))
GAUGE_2 = Metric(gauge=Gauge(data_points=[_point(3.0, "second")]))


@pytest.mark.parametrize(
    ("fragments", "values"),
    [
        ((DELTA_SUM, GAUGE_1), [2.0]),  # the gauge replaces the sum
        ((GAUGE_1, GAUGE_2), [2.0, 3.0]),  # the gauges merge
        ((GAUGE_1, DELTA_SUM, GAUGE_2), [3.0]),  # the sum, then the second gauge, replace
        ((GAUGE_1, DELTA_SUM), [1.0]),
    ],
)
def test_the_last_case_of_a_metrics_data_wins_and_occurrences_of_one_merge(
    fragments: tuple[Metric, ...], values: list[float]
) -> None:
    # One metric given in fragments: upb merges them.
    body = _request_of(b"".join(fragment.SerializeToString() for fragment in fragments))
    decoded = decode_otlp_protobuf(body)
    assert [sample.value for sample in decoded.samples] == values
    assert decoded == upb_decode(body)


def test_varints_beyond_their_fields_size_are_cut_as_upb_cuts_them() -> None:
    # aggregation_temporality is an int32: 2**32 + 1 is 1, delta. A point's flags are a
    # uint32: 2**33 + 1 has the "no recorded value" bit.
    flagged = _point(2.0, "b").SerializeToString() + _field(8, 0, _varint(2**33 + 1))
    sum_data = (
        _field(1, 2, _point(1.0, "a").SerializeToString())
        + _field(2, 0, _varint(2**32 + 1))
        + _field(1, 2, flagged)
    )
    body = _request_of(Metric(name="s").SerializeToString() + _field(7, 2, sum_data))
    decoded = decode_otlp_protobuf(body)
    labels = {"state": "a", "temporality": "delta"}
    assert [(s.value, s.labels) for s in decoded.samples] == [(1.0, labels)]
    assert decoded.skipped == {"no_recorded_value": 1}
    assert decoded == upb_decode(body)


def test_a_flood_of_empty_messages_is_read_without_keeping_them() -> None:
    # 200,000 empty metrics in 400 kB: upb holds a message for each (and the first version of
    # this reader a tuple for each, ~40 MB); the reader keeps nothing but what it maps.
    metrics = _field(2, 2, b"") * 200_000  # ScopeMetrics.metrics, each empty
    body = _field(1, 2, HOST + _field(2, 2, metrics))
    tracemalloc.start()
    try:
        decoded = decode_otlp_protobuf(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded == Decoded()
    assert peak < 2_000_000


def test_a_point_is_never_read_past_its_end() -> None:
    # A point of start and end time only, then an unknown fixed64 field that looks like the
    # value that point lacks.
    point = NumberDataPoint(start_time_unix_nano=T0_NS, time_unix_nano=T0_NS).SerializeToString()
    gauge = _field(1, 2, point) + _field(4, 1, struct.pack("<d", 1.5))
    body = _request_of(Metric(name="g").SerializeToString() + _field(5, 2, gauge))
    decoded = decode_otlp_protobuf(body)
    assert [(r.item, r.reason) for r in decoded.rejected] == [
        ("metric 'g'", "data point has no value")
    ]
    assert decoded == upb_decode(body)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x0a", "ends inside a field"),
        (b"\x0a\x05\x0a\x03", "a field runs past its message"),
        (b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "longer than 10 bytes"),
        (b"\x02\x00", "a field tag is invalid"),  # field number 0
        (b"\x0f", "wire type 7"),
        (b"\x0c", "wire type 4"),  # a group's end with no start
        (b"\x1b\x08\x01", "a group does not end"),
        (b"\x1b\x24", "a group ends that did not start"),
        (b"\x1b" * 101, "groups nest too deep"),
        # resource_metrics { scope_metrics { metrics { name: "\xff" } } }
        (b"\x0a\x07\x12\x05\x12\x03\x0a\x01\xff", "not UTF-8"),
        # the same metric with a gauge whose one point's length overruns it
        (b"\x0a\x0a\x12\x08\x12\x06\x2a\x04\x0a\x05\x19\x00", "runs past its message"),
    ],
)
def test_malformed_bodies_name_what_is_wrong(body: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_otlp_protobuf(body)


@example(b"")
@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_as_upb_reads_them_or_are_a_protocol_error(body: bytes) -> None:
    _check_against_upb(body)


def _check_against_upb(body: bytes) -> None:
    """What upb reads decodes the same; what it refuses raises ProtocolError or decodes (the
    fault may lie only in fields the reader skips unread), never another exception."""
    try:
        expected = upb_decode(body)
    except DecodeError:
        with contextlib.suppress(ProtocolError):
            decode_otlp_protobuf(body)
        return
    assert decode_otlp_protobuf(body) == expected


def test_points_with_one_attribute_set_share_one_labels_dict() -> None:
    # Intake.check checks a labels dict once by its id: this is what makes that cache hit.
    decoded = decode_otlp_protobuf(otlp_export().body)
    by_set: dict[tuple[str, str], set[int]] = {}
    for sample in decoded.samples:
        by_set.setdefault((sample.source, sample.labels["state"]), set()).add(id(sample.labels))
    assert len(by_set) == 5 * 4
    assert all(len(ids) == 1 for ids in by_set.values())


def test_the_bench_export_decodes_as_upb_reads_it() -> None:
    body = otlp_export(1_773_923_696_789_123_456).body
    decoded = decode_otlp_protobuf(body)
    assert len(decoded.samples) == 1_000
    assert decoded == upb_decode(body)
