"""The event schema: each validation rule, good and bad, and the stream entry round trip."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest_shared.exceptions import InvalidEventError
from ingest_shared.schema import (
    EVENT_DECODER,
    JSON_ENCODER,
    TelemetryEvent,
    TimeWindow,
    format_ms,
    sample_from_entry,
    to_epoch_ms,
)

NOW = to_epoch_ms(dt.datetime(2026, 3, 19, 12, 0, tzinfo=dt.UTC))
WINDOW = TimeWindow(max_clock_skew_ms=300_000, retention_ms=86_400_000)


def decode(**fields: object) -> TelemetryEvent:
    body = {"source": "sensor-a", "metric": "cpu", "value": 12.5} | fields
    return EVENT_DECODER.decode(JSON_ENCODER.encode(body))


def test_tutorial_event_is_accepted_and_echoed_in_utc() -> None:
    event = decode(occurredAt="2026-03-19T12:00:00Z")
    out = WINDOW.accept(event, NOW)
    assert (out.source, out.metric, out.value, out.occurredAt) == (
        "sensor-a",
        "cpu",
        12.5,
        "2026-03-19T12:00:00Z",
    )


def test_missing_occurred_at_defaults_to_now() -> None:
    assert WINDOW.accept(decode(), NOW + 123).occurredAt == "2026-03-19T12:00:00.123Z"


def test_naive_occurred_at_is_utc_and_offsets_are_converted() -> None:
    naive = WINDOW.accept(decode(occurredAt="2026-03-19T11:59:00"), NOW)
    offset = WINDOW.accept(decode(occurredAt="2026-03-19T13:59:00+02:00"), NOW)
    assert naive.occurredAt == offset.occurredAt == "2026-03-19T11:59:00Z"


@pytest.mark.parametrize("metric", ["cpu", "cpu.load_1m", "A-Z_0.9", "x" * 128])
def test_valid_metric_names(metric: str) -> None:
    assert decode(metric=metric).metric == metric


@pytest.mark.parametrize(
    "metric", ["", "cpu\n", "cpu load", "{cpu}", "cpu;1", "x" * 129, "cpü", "a/b", 7]
)
def test_invalid_metric_names_are_rejected(metric: object) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.metric"):
        decode(metric=metric)


@pytest.mark.parametrize("source", ["sensor-a", "gw:1/dev@site", "a.b_c-d", "s" * 128])
def test_valid_sources(source: str) -> None:
    assert decode(source=source).source == source


@pytest.mark.parametrize("source", ["", "sensor a", "a\n", "{a}", "s" * 129, None])
def test_invalid_sources_are_rejected(source: object) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.source"):
        decode(source=source)


@pytest.mark.parametrize("value", [0, -1, 12.5, 1e308, -1e-300])
def test_finite_numbers_are_accepted(value: float) -> None:
    assert decode(value=value).value == value


@pytest.mark.parametrize("raw", [b"1e400", b"-1e400", b"true", b'"12.5"', b"null", b"[]"])
def test_non_finite_and_non_numbers_are_rejected(raw: bytes) -> None:
    body = b'{"source":"s","metric":"m","value":' + raw + b"}"
    with pytest.raises(msgspec.ValidationError, match=r"\$\.value"):
        EVENT_DECODER.decode(body)


def test_nan_literal_is_not_json() -> None:
    with pytest.raises(msgspec.DecodeError):
        EVENT_DECODER.decode(b'{"source":"s","metric":"m","value":NaN}')


def test_missing_field_is_named() -> None:
    with pytest.raises(msgspec.ValidationError, match="missing required field `value`"):
        EVENT_DECODER.decode(b'{"source":"s","metric":"m"}')


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    assert decode(unit="%").value == 12.5


def test_future_beyond_skew_is_rejected_but_within_skew_is_accepted() -> None:
    within = format_ms(NOW + 300_000)
    beyond = format_ms(NOW + 300_001)
    assert WINDOW.accept(decode(occurredAt=within), NOW).occurredAt == within
    with pytest.raises(InvalidEventError, match="future") as info:
        WINDOW.accept(decode(occurredAt=beyond), NOW)
    assert info.value.field == "occurredAt"


def test_older_than_retention_is_rejected() -> None:
    oldest = format_ms(NOW - 86_400_000)
    assert WINDOW.accept(decode(occurredAt=oldest), NOW).occurredAt == oldest
    with pytest.raises(InvalidEventError, match="retention") as info:
        WINDOW.accept(decode(occurredAt=format_ms(NOW - 86_400_001)), NOW)
    assert info.value.field == "occurredAt"


def test_stream_entry_round_trip() -> None:
    out = WINDOW.accept(decode(value=0.1, occurredAt="2026-03-19T11:00:00.5Z"), NOW)
    fields = {k: v.encode() for k, v in out.stream_fields().items()}
    sample = sample_from_entry(b"1-0", fields, WINDOW, NOW)
    assert sample == ("cpu", "sensor-a", NOW - 3_600_000 + 500, 0.1, None)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({b"metric": b"cpu", b"value": b"1"}, "source: missing"),
        ({b"source": b"s", b"metric": b"cpu", b"value": b"abc"}, "value"),
        ({b"source": b"s", b"metric": b"cpu", b"value": b"nan"}, "value"),
        ({b"source": b"s", b"metric": b"cpu", b"value": b"inf"}, "value"),
        ({b"source": b"\xff", b"metric": b"cpu", b"value": b"1"}, "UTF-8"),
        ({b"source": b"s", b"metric": b"c p u", b"value": b"1"}, "metric"),
        ({b"source": b"s", b"metric": b"cpu", b"value": b"1", b"occurredAt": b"soon"}, "occurred"),
    ],
)
def test_garbage_stream_entries_are_invalid(fields: dict[bytes, bytes], reason: str) -> None:
    with pytest.raises(InvalidEventError, match=reason):
        sample_from_entry(b"1-0", fields, WINDOW, NOW)


def test_entry_without_occurred_at_uses_its_stream_id_time() -> None:
    entry_id = f"{NOW - 5000}-3".encode()
    fields = {b"source": b"s", b"metric": b"cpu", b"value": b"2"}
    assert sample_from_entry(entry_id, fields, WINDOW, NOW).timestamp_ms == NOW - 5000


def test_an_empty_occurred_at_is_the_stream_id_time_too() -> None:
    # An append function of an older release leaves a batch's defaulted occurredAt empty.
    entry_id = f"{NOW - 7000}-0".encode()
    fields = {b"source": b"s", b"metric": b"cpu", b"value": b"2", b"occurredAt": b""}
    assert sample_from_entry(entry_id, fields, WINDOW, NOW).timestamp_ms == NOW - 7000


@given(st.integers(min_value=0, max_value=253_402_300_799_999))
def test_format_ms_round_trips_through_the_decoder(timestamp_ms: int) -> None:
    text = format_ms(timestamp_ms)
    assert text.endswith("Z")
    assert to_epoch_ms(msgspec.json.decode(f'"{text}"', type=dt.datetime)) == timestamp_ms


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_value_survives_the_stream_encoding(value: float) -> None:
    out = WINDOW.accept(decode(value=value), NOW)
    fields = {k: v.encode() for k, v in out.stream_fields().items()}
    assert sample_from_entry(b"1-0", fields, WINDOW, NOW).value == value
