"""The InfluxDB line-protocol decoder, fed by the real clients' own serializers.

``influxdb_client.Point.to_line_protocol`` (v2) and ``influxdb.line_protocol.make_lines`` (v1)
write the lines; the decoder must give back what they were given, in every precision, and
reject bad lines one by one while the rest of the body still decodes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb.line_protocol import make_lines  # type: ignore[import-untyped]
from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision

from ingest_producer.protocols import ProtocolError, ProtocolSample
from ingest_producer.protocols.lineprotocol import LineProtocolMapping, decode_line_protocol

MOMENT = dt.datetime(2026, 3, 19, 12, 34, 56, tzinfo=dt.UTC)  # whole seconds: exact as floats
MOMENT_MS = 1_773_923_696_000
# One instant with sub-second digits, written in each precision (v1 and v2 spellings).
STAMPS = {
    "ns": 1_773_923_696_789_123_456,
    "n": 1_773_923_696_789_123_456,
    "us": 1_773_923_696_789_123,
    "u": 1_773_923_696_789_123,
    "ms": 1_773_923_696_789,
    "s": 1_773_923_696,
    "m": 29_565_394,
    "h": 492_756,
}
EXPECTED_MS = {
    "ns": 1_773_923_696_789,
    "n": 1_773_923_696_789,
    "us": 1_773_923_696_789,
    "u": 1_773_923_696_789,
    "ms": 1_773_923_696_789,
    "s": 1_773_923_696_000,
    "m": 1_773_923_640_000,
    "h": 1_773_921_600_000,
}


def _line(
    measurement: str,
    tags: dict[str, str],
    fields: dict[str, Any],
    time: dt.datetime | int | None = None,
    precision: str = WritePrecision.NS,
) -> str:
    """One line as influxdb_client (v2) writes it."""
    point = Point(measurement)  # type: ignore[no-untyped-call]
    for key, value in tags.items():
        point.tag(key, value)  # type: ignore[no-untyped-call]
    for key, value in fields.items():
        point.field(key, value)  # type: ignore[no-untyped-call]
    if time is not None:
        point.time(time, precision)  # type: ignore[no-untyped-call]
    return str(point.to_line_protocol())  # type: ignore[no-untyped-call]


def _tuples(samples: list[ProtocolSample]) -> list[tuple[str, str, dict[str, str], float, Any]]:
    return [(s.metric, s.source, s.labels, s.value, s.timestamp_ms) for s in samples]


def test_telegraf_batch_maps_fields_tags_and_types() -> None:
    body = (
        b"# written by telegraf\n"
        b"cpu,cpu=cpu0,host=web-1 usage_idle=98.5,usage_user=1.25 1773923696789123456\n"
        b"\n"
        b'mem,host=web-1 used=123i,free=42u,swap_on=true,active=F,note="ok, fine" 1773923696'
        b"789123456\n"
        b"temperature,entity_id=sensor.kitchen,domain=sensor value=21.5\n"
    )
    decoded = decode_line_protocol(body)
    assert _tuples(decoded.samples) == [
        ("cpu_usage_idle", "web-1", {"cpu": "cpu0"}, 98.5, 1_773_923_696_789),
        ("cpu_usage_user", "web-1", {"cpu": "cpu0"}, 1.25, 1_773_923_696_789),
        ("mem_used", "web-1", {}, 123.0, 1_773_923_696_789),
        ("mem_free", "web-1", {}, 42.0, 1_773_923_696_789),
        ("mem_swap_on", "web-1", {}, 1.0, 1_773_923_696_789),
        ("mem_active", "web-1", {}, 0.0, 1_773_923_696_789),
        ("temperature", "sensor.kitchen", {"domain": "sensor"}, 21.5, None),
    ]
    assert decoded.skipped == {"string_field": 1}
    assert decoded.rejected == []


@pytest.mark.parametrize("text", ["t", "T", "true", "True", "TRUE", "f", "F", "false", "False"])
def test_every_boolean_spelling_is_a_number(text: str) -> None:
    decoded = decode_line_protocol(f"m,host=a flag={text}".encode())
    assert [s.value for s in decoded.samples] == [1.0 if text[0] in "tT" else 0.0]


def test_bad_lines_are_rejected_alone_with_their_text_and_reason() -> None:
    good = "m,host=a value=1 1773923696789000000"
    bad = {
        "m,host=a": "missing fields",
        "m,host=a value=": "invalid field",
        "m,host=a value=abc": "invalid value 'abc'",
        "m,host=a value=nan": "invalid number 'nan'",
        "m,host=a value=1e999": "invalid number",
        "m,host=a value=1_000": "invalid number",
        "m,host=a n=9223372036854775808i": "out of range",
        "m,host=a n=-1u": "invalid value",
        "m,host=a value=1 12:00": "invalid timestamp",
        "m,host=a value=1 99999999999999999999": "out of the int64 range",
        "m,host value=1": "invalid tag",
        "m,region=eu value=1": "no source tag (one of host, device_id, entity_id)",
        ",host=a value=1": "missing measurement",
        'm,host=a s="never closed': "unterminated string",
        "m,host=a value=1,": "invalid field",
    }
    body = "\n".join([good, *bad, good]).encode()
    decoded = decode_line_protocol(body)
    assert len(decoded.samples) == 2
    assert [r.item for r in decoded.rejected] == list(bad)
    for rejected, reason in zip(decoded.rejected, bad.values(), strict=True):
        assert reason in rejected.reason, rejected


def test_a_line_that_is_not_utf8_is_rejected_and_the_rest_decodes() -> None:
    body = b"m,host=a value=1\nm,host=\xff\xfe value=2\nm,host=b value=3\n"
    decoded = decode_line_protocol(body)
    assert [s.source for s in decoded.samples] == ["a", "b"]
    assert [r.reason for r in decoded.rejected] == ["line is not valid UTF-8"]


def test_mapping_is_configurable() -> None:
    mapping = LineProtocolMapping(
        value_field="v", source_tags=("node",), default_source="unknown", separator="."
    )
    body = b"disk,node=n1,host=h path_used=3,v=4\ndisk,host=h v=5\n"
    assert _tuples(decode_line_protocol(body, mapping=mapping).samples) == [
        ("disk.path_used", "n1", {"host": "h"}, 3.0, None),
        ("disk", "n1", {"host": "h"}, 4.0, None),
        ("disk", "unknown", {"host": "h"}, 5.0, None),
    ]


def test_the_first_present_source_tag_wins_and_the_others_stay_labels() -> None:
    body = b"m,device_id=d1,entity_id=e1 value=1\n"
    (sample,) = decode_line_protocol(body).samples
    assert (sample.source, sample.labels) == ("d1", {"entity_id": "e1"})


def test_a_string_field_may_span_lines() -> None:
    # influxdb_client escapes quotes and backslashes in strings, not newlines.
    line = _line("log", {"host": "a"}, {"msg": "one\ntwo", "n": 2})
    assert "\n" in line
    decoded = decode_line_protocol(f"{line}\nlog,host=b n=3".encode())
    assert [(s.source, s.value) for s in decoded.samples] == [("a", 2.0), ("b", 3.0)]
    assert decoded.skipped == {"string_field": 1}
    assert decoded.rejected == []


def test_strings_with_newlines_crlf_and_odd_spacing() -> None:
    body = (
        # A lone backslash before a newline is a literal backslash, inside a string too.
        b'm,host=a s1="a\nb",s2="c\\\n#d",v=1\r\n'
        b"m,host=b\\ c value=2\r\n"
        b"m,host=c  value=3\n"
        b"m,host=d value=4 1000000 extra\n"
    )
    decoded = decode_line_protocol(body)
    assert [(s.metric, s.source, s.value) for s in decoded.samples] == [
        ("m_v", "a", 1.0),
        ("m", "b c", 2.0),
    ]
    assert decoded.skipped == {"string_field": 2}
    assert [(r.item, r.reason) for r in decoded.rejected] == [
        ("m,host=c  value=3", "invalid field '': expected name=value"),
        ("m,host=d value=4 1000000 extra", "invalid timestamp '1000000 extra'"),
    ]


def test_an_unclosed_string_costs_linear_time_and_only_its_own_line() -> None:
    # Every later line holds an escaped quote, which cannot close the string: a decoder that
    # re-read the growing text line after line would take minutes here (pytest-timeout).
    lines = ['m,host=a s="never closed', *(f'm,host=b\\"{n} value={n}' for n in range(20_000))]
    decoded = decode_line_protocol("\n".join(lines).encode())
    assert [(r.item, r.reason) for r in decoded.rejected] == [
        ('m,host=a s="never closed', "unterminated string in field 's'")
    ]
    assert len(decoded.samples) == 20_000
    assert decoded.samples[-1].source == 'b\\"19999'


@pytest.mark.parametrize(
    ("precision", "client_precision"),
    [
        ("ns", WritePrecision.NS),
        ("us", WritePrecision.US),
        ("ms", WritePrecision.MS),
        ("s", WritePrecision.S),
    ],
)
def test_v2_client_points_in_each_precision(precision: str, client_precision: str) -> None:
    tags = {"host": "gw,1", "room name": "living=room"}
    fields = {"pm2.5": 12.5, "co2 ppm": 415, "ok": True, "status": 'fine, "really"'}
    line = _line("air quality", tags, fields, MOMENT, client_precision)
    decoded = decode_line_protocol(line.encode(), precision=precision)
    assert _tuples(decoded.samples) == [
        ("air quality_co2 ppm", "gw,1", {"room name": "living=room"}, 415.0, MOMENT_MS),
        ("air quality_ok", "gw,1", {"room name": "living=room"}, 1.0, MOMENT_MS),
        ("air quality_pm2.5", "gw,1", {"room name": "living=room"}, 12.5, MOMENT_MS),
    ]
    assert decoded.skipped == {"string_field": 1}

    exact = _line("m", {"host": "a"}, {"value": 1.0}, STAMPS[precision], precision)
    (sample,) = decode_line_protocol(exact.encode(), precision).samples
    assert sample.timestamp_ms == EXPECTED_MS[precision]


@pytest.mark.parametrize("precision", ["n", "u", "ms", "s", "m", "h"])
def test_v1_client_lines_in_each_precision(precision: str) -> None:
    data = {
        "points": [
            {
                "measurement": "disk io",
                "tags": {"host": "db=1", "path": "/var/lib, data"},
                "fields": {"reads": 10, "busy": 0.25, "value": 7.5, "label": "x\\y"},
                "time": STAMPS[precision],
            },
            {"measurement": "up", "tags": {"host": "db=1"}, "fields": {"value": True}},
        ]
    }
    body = make_lines(data, precision=precision).encode()
    decoded = decode_line_protocol(body, precision=precision)
    labels = {"path": "/var/lib, data"}
    stamp = EXPECTED_MS[precision]
    assert _tuples(decoded.samples) == [
        ("disk io_busy", "db=1", labels, 0.25, stamp),
        ("disk io_reads", "db=1", labels, 10.0, stamp),
        ("disk io", "db=1", labels, 7.5, stamp),
        ("up", "db=1", {}, 1.0, None),
    ]
    assert decoded.skipped == {"string_field": 1}


def test_unknown_precision_is_the_one_error() -> None:
    with pytest.raises(ProtocolError, match="unknown precision 'minutes'"):
        decode_line_protocol(b"m,host=a value=1", precision="minutes")


def test_escapes_follow_the_spec() -> None:
    # \\ is one backslash; a backslash before an ordinary character stays as it is.
    body = rb"we\ ird\,m,host=a\\b,t\=k=v\ 1 fi\,eld=1,path=2 1000000" + b"\n"
    (first, second) = decode_line_protocol(body).samples
    assert (first.metric, first.source, first.labels) == ("we ird,m_fi,eld", "a\\b", {"t=k": "v 1"})
    assert second.metric == "we ird,m_path"
    assert decode_line_protocol(rb"m,host=c:\temp value=1").samples[0].source == "c:\\temp"


# --- properties ----------------------------------------------------------------------------

# Characters that need escaping, plus ordinary and non-ASCII ones. influxdb_client does not
# escape backslashes in names (so a backslash before a special character is ambiguous even to
# InfluxDB), and neither client can carry a newline, tab or carriage return in a name.
NAME_CHARS = "abcXYZ09_.-,= \"'#ü€"
names = st.text(NAME_CHARS, min_size=1, max_size=8).filter(lambda s: not s.startswith("#"))
field_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.text(NAME_CHARS + "\\\n", max_size=8),
)
points = st.tuples(
    names,
    st.dictionaries(names.filter(lambda s: s != "host"), names, max_size=3),
    names,
    st.dictionaries(names, field_values, min_size=1, max_size=4),
    st.one_of(st.none(), st.integers(min_value=0, max_value=2**62)),
)


def _expected(
    measurement: str, tags: dict[str, str], host: str, fields: dict[str, Any], stamp: int | None
) -> tuple[list[tuple[str, str, dict[str, str], float, Any]], int]:
    samples = [
        (
            measurement if key == "value" else f"{measurement}_{key}",
            host,
            tags,
            float(value),
            None if stamp is None else stamp // 1_000_000,
        )
        for key, value in sorted(fields.items())
        if not isinstance(value, str)
    ]
    return samples, sum(isinstance(value, str) for value in fields.values())


@settings(max_examples=300)
@given(points)
def test_v2_client_round_trip(
    point: tuple[str, dict[str, str], str, dict[str, Any], int | None],
) -> None:
    measurement, tags, host, fields, stamp = point
    line = _line(measurement, {"host": host, **tags}, fields, stamp)
    decoded = decode_line_protocol(line.encode())
    samples, strings = _expected(measurement, tags, host, fields, stamp)
    assert decoded.rejected == []
    assert _tuples(decoded.samples) == samples
    assert decoded.skipped.get("string_field", 0) == strings


@settings(max_examples=300)
@given(points, st.sampled_from(["\\", "a\\", "\\b", "x\\,y"]))
def test_v1_client_round_trip_with_backslashes(
    point: tuple[str, dict[str, str], str, dict[str, Any], int | None], extra: str
) -> None:
    measurement, tags, host, fields, stamp = point
    # make_lines escapes backslashes everywhere, so names may hold them too.
    measurement, host = measurement + extra, extra + host
    written: dict[str, Any] = {"measurement": measurement, "tags": {"host": host, **tags}}
    written["fields"] = fields
    if stamp is not None:
        written["time"] = stamp
    decoded = decode_line_protocol(make_lines({"points": [written]}).encode())
    samples, strings = _expected(measurement, tags, host, fields, stamp)
    assert decoded.rejected == []
    assert _tuples(decoded.samples) == samples
    assert decoded.skipped.get("string_field", 0) == strings


@settings(max_examples=500)
@given(
    st.text("abcxyz019_.-", min_size=1, max_size=6),
    st.dictionaries(
        st.text("abcxyz019_.-", min_size=1, max_size=6),
        st.text("abcxyz019_.-:/", min_size=1, max_size=6),
        max_size=3,
    ),
    st.lists(
        st.tuples(
            st.text("abcxyz_", min_size=1, max_size=6),
            st.from_regex(r"\A-?[0-9]{1,6}(\.[0-9]{1,4})?(e-?[0-9])?i?\Z|\A(t|F|TRUE)\Z"),
        ),
        min_size=1,
        max_size=4,
    ),
    st.one_of(st.none(), st.integers(min_value=-(2**62), max_value=2**62)),
)
def test_fast_path_and_escape_path_agree(
    measurement: str, tags: dict[str, str], fields: list[tuple[str, str]], stamp: int | None
) -> None:
    # A plain line takes the fast path; the same line with a quoted field takes the other.
    key = ",".join([measurement, "host=h", *(f"{k}={v}" for k, v in tags.items())])
    field_text = ",".join(f"{k}={v}" for k, v in fields)
    tail = "" if stamp is None else f" {stamp}"
    plain = decode_line_protocol(f"{key} {field_text}{tail}".encode())
    quoted = decode_line_protocol(f'{key} {field_text},zz="q"{tail}'.encode())
    assert quoted.skipped == {"string_field": 1} or quoted.rejected
    assert _tuples(plain.samples) == _tuples(quoted.samples)
    assert [r.reason for r in plain.rejected] == [r.reason for r in quoted.rejected]


@settings(max_examples=500)
@given(st.binary(max_size=300) | st.text(NAME_CHARS + "\\\n i=0123456789", max_size=80))
def test_any_body_decodes_without_raising(body: bytes | str) -> None:
    raw = body.encode() if isinstance(body, str) else body
    for precision in ("ns", "h"):
        decoded = decode_line_protocol(raw, precision=precision)
        assert all(isinstance(s.value, float) for s in decoded.samples)
