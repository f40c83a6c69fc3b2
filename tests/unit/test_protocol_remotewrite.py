"""The Prometheus remote-write 1.0 decoder: snappy block format + prometheus.WriteRequest.

Bodies are built with the vendored protobuf classes and, once, byte by byte from the wire
format (so a wrong field number in the vendored .proto cannot pass by round-tripping through
itself); they are compressed with snappy's block format, as Prometheus sends them.
"""

from __future__ import annotations

import math
import struct

import cramjam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest_producer.protocols import BodyTooLargeError, ProtocolError
from ingest_producer.protocols.remote_write_pb2 import (
    Histogram,
    Label,
    MetricMetadata,
    Sample,
    TimeSeries,
    WriteRequest,
)
from ingest_producer.protocols.remotewrite import RemoteWriteMapping, decode_remote_write

STALE_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
T0 = 1_773_923_696_789


def _snappy(data: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(data))


def _series(labels: dict[str, str], *samples: tuple[float, int]) -> TimeSeries:
    return TimeSeries(
        labels=[Label(name=name, value=value) for name, value in labels.items()],
        samples=[Sample(value=value, timestamp=stamp) for value, stamp in samples],
    )


def _body(*series: TimeSeries) -> bytes:
    return _snappy(WriteRequest(timeseries=series).SerializeToString())


def test_series_become_samples_with_metric_source_and_labels() -> None:
    up = {"__name__": "up", "instance": "node-1:9100", "job": "node"}
    cpu = {"__name__": "node_cpu_seconds_total", "cpu": "0", "instance": "node-2:9100"}
    decoded = decode_remote_write(
        _body(_series(up, (1.0, T0), (0.0, T0 + 15_000)), _series(cpu, (42.5, T0)))
    )
    assert [(s.metric, s.source, s.labels, s.value, s.timestamp_ms) for s in decoded.samples] == [
        ("up", "node-1:9100", {"job": "node"}, 1.0, T0),
        ("up", "node-1:9100", {"job": "node"}, 0.0, T0 + 15_000),
        ("node_cpu_seconds_total", "node-2:9100", {"cpu": "0"}, 42.5, T0),
    ]
    assert decoded.rejected == []
    assert decoded.skipped == {}


def test_hand_encoded_wire_format_decodes() -> None:
    # WriteRequest{timeseries(1): TimeSeries{labels(1): Label{name(1), value(2)},
    # samples(2): Sample{value(1): double, timestamp(2): varint}}}, written by hand.
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    def label(name: bytes, value: bytes) -> bytes:
        return field(1, field(1, name) + field(2, value))

    stamp = bytearray()
    rest = T0
    while rest >= 0x80:
        stamp.append(rest & 0x7F | 0x80)
        rest >>= 7
    stamp.append(rest)
    sample = field(2, b"\x09" + struct.pack("<d", 2.5) + b"\x10" + bytes(stamp))
    series = label(b"__name__", b"temp") + label(b"instance", b"probe-7") + label(b"room", b"a")
    body = _snappy(field(1, series + sample))
    (decoded,) = decode_remote_write(body).samples
    assert (decoded.metric, decoded.source, decoded.labels) == ("temp", "probe-7", {"room": "a"})
    assert (decoded.value, decoded.timestamp_ms) == (2.5, T0)


def test_nan_infinity_and_stale_markers_are_dropped_per_sample_and_counted() -> None:
    labels = {"__name__": "m", "instance": "i"}
    values = [1.0, math.nan, math.inf, -math.inf, STALE_NAN, STALE_NAN, 2.0]
    body = _body(_series(labels, *((value, T0 + n) for n, value in enumerate(values))))
    decoded = decode_remote_write(body)
    assert [s.value for s in decoded.samples] == [1.0, 2.0]
    assert decoded.skipped == {"nan": 1, "infinity": 2, "stale_marker": 2}
    assert decoded.rejected == []


def test_histograms_are_skipped_and_exemplars_and_metadata_ignored() -> None:
    histogram_series = TimeSeries(
        labels=[Label(name="__name__", value="latency"), Label(name="instance", value="i")],
        histograms=[Histogram(count_int=3, sum=1.5, schema=3, timestamp=T0)] * 2,
    )
    series = _series({"__name__": "m", "instance": "i"}, (1.0, T0))
    series.exemplars.add(value=0.5, timestamp=T0).labels.add(name="trace_id", value="abc")
    request = WriteRequest(timeseries=[histogram_series, series])
    request.metadata.add(type=MetricMetadata.COUNTER, metric_family_name="m", help="h")
    decoded = decode_remote_write(_snappy(request.SerializeToString()))
    assert [(s.metric, s.value) for s in decoded.samples] == [("m", 1.0)]
    assert decoded.skipped == {"histogram": 2}


def test_series_without_name_or_source_are_rejected_with_their_sample_count() -> None:
    body = _body(
        _series({"__name__": "m", "job": "j"}, (1.0, T0), (2.0, T0 + 1)),
        _series({"instance": "i", "job": "j"}, (3.0, T0)),
        _series({"__name__": "ok", "instance": "i"}, (4.0, T0)),
    )
    decoded = decode_remote_write(body)
    assert [s.metric for s in decoded.samples] == ["ok"]
    assert [(r.reason, r.count) for r in decoded.rejected] == [
        ("no instance label", 2),
        ("no __name__ label", 1),
    ]
    assert decoded.rejected[0].item == "{__name__='m', job='j'}"


def test_source_label_and_default_source_are_configurable() -> None:
    mapping = RemoteWriteMapping(source_label="device", default_source="unknown")
    body = _body(
        _series({"__name__": "m", "device": "d1", "instance": "i"}, (1.0, T0)),
        _series({"__name__": "m", "instance": "i"}, (2.0, T0)),
    )
    decoded = decode_remote_write(body, mapping)
    assert [(s.source, s.labels) for s in decoded.samples] == [
        ("d1", {"instance": "i"}),
        ("unknown", {"instance": "i"}),
    ]


def test_framed_snappy_and_uncompressed_bodies_are_protocol_errors() -> None:
    raw = WriteRequest(timeseries=[_series({"__name__": "m", "instance": "i"}, (1.0, T0))])
    for body in (bytes(cramjam.snappy.compress(raw.SerializeToString())), raw.SerializeToString()):
        with pytest.raises(ProtocolError):
            decode_remote_write(body)


def test_snappy_that_is_not_a_write_request_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match=r"not a prometheus\.WriteRequest"):
        decode_remote_write(_snappy(b"\x0a\x05hello world"))


def test_oversized_output_is_refused_before_decompressing() -> None:
    # The block header declares ~4 GiB; nothing that size may be allocated.
    with pytest.raises(BodyTooLargeError, match="decompresses to 4294967295 bytes"):
        decode_remote_write(b"\xff\xff\xff\xff\x0f\x00", max_decoded_bytes=1 << 20)
    body = _body(_series({"__name__": "m", "instance": "i"}, (1.0, T0)))
    with pytest.raises(BodyTooLargeError):
        decode_remote_write(body, max_decoded_bytes=10)


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bodies_only_raise_protocol_error(body: bytes) -> None:
    for candidate in (body, _snappy(body)):
        try:
            decoded = decode_remote_write(candidate)
        except ProtocolError:
            continue
        assert all(math.isfinite(s.value) for s in decoded.samples)


label_text = st.text(max_size=6)
label_sets = st.builds(
    lambda named, other: {**other, **named},
    st.fixed_dictionaries({}, optional={"__name__": label_text, "instance": label_text}),
    st.dictionaries(label_text, label_text, max_size=3),
)


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            label_sets,
            st.lists(st.tuples(st.floats(), st.integers(-(2**63), 2**63 - 1)), max_size=3),
        ),
        max_size=6,
    )
)
def test_every_sample_is_decoded_skipped_or_rejected(
    series: list[tuple[dict[str, str], list[tuple[float, int]]]],
) -> None:
    decoded = decode_remote_write(_body(*(_series(labels, *samples) for labels, samples in series)))
    total = sum(len(samples) for _, samples in series)
    accounted = len(decoded.samples) + sum(decoded.skipped.values())
    assert accounted + sum(r.count for r in decoded.rejected) == total
