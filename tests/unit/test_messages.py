"""422 messages say in words what a field must be; they never quote a regex or a float bound."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest_producer.jsonbody import field_errors
from ingest_producer.models import ProcessRequest
from ingest_shared.messages import describe, plain, split_location
from ingest_shared.schema import EVENT_DECODER, TelemetryEvent

METRIC_RULE = "must be 1\u2013128 characters: letters, digits, `_ . : -`"
SOURCE_RULE = "must be 1\u2013128 characters: letters, digits, `_ . : @ / -`"


def messages(body: bytes) -> dict[str | None, str]:
    try:
        EVENT_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        return {e.field: e.message for e in field_errors(body, TelemetryEvent, exc)}
    raise AssertionError(f"{body!r} is valid")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"source":"a","metric":"cpu load","value":1}', {"metric": METRIC_RULE}),
        (b'{"source":"a","metric":"","value":1}', {"metric": METRIC_RULE}),
        (b'{"source":"a","metric":"' + b"m" * 129 + b'","value":1}', {"metric": METRIC_RULE}),
        (b'{"source":"a b","metric":"m","value":1}', {"source": SOURCE_RULE}),
        (
            b'{"source":"a","metric":"m","value":"high"}',
            {"value": "must be a finite number, got a string"},
        ),
        (
            b'{"source":"a","metric":"m","value":null}',
            {"value": "must be a finite number, got null"},
        ),
        (
            b'{"source":"a","metric":"m","value":1,"occurredAt":"noon"}',
            {"occurredAt": "must be an RFC 3339 date-time such as 2026-01-31T12:00:00Z"},
        ),
        (b"[1]", {None: "must be a JSON object, got an array"}),
    ],
)
def test_each_problem_is_said_in_words(body: bytes, expected: dict[str | None, str]) -> None:
    assert messages(body) == expected


def test_process_request_rules_come_from_their_own_constraints() -> None:
    body = b'{"consumer": "a b", "count": 0}'
    try:
        msgspec.json.decode(body, type=ProcessRequest)
    except msgspec.ValidationError as exc:
        errors = {e.field: e.message for e in field_errors(body, ProcessRequest, exc)}
    assert errors == {
        "consumer": "must be 1\u2013128 characters: letters, digits, `_ . : @ / -`",
        "count": "must be an integer from 1 to 10000",
    }


@given(st.text(min_size=1, max_size=200).filter(lambda s: not s.isalnum()))
def test_no_message_quotes_a_pattern(name: str) -> None:
    body = msgspec.json.encode({"source": name, "metric": name, "value": name})
    try:
        EVENT_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        for error in field_errors(body, TelemetryEvent, exc):
            assert "regex" not in error.message
            assert "\\A" not in error.message
            assert "e+308" not in error.message


def test_location_is_split_off_and_unknown_messages_are_kept() -> None:
    assert split_location("Expected `int`, got `str` - at `$.count`") == (
        "count",
        "Expected `int`, got `str`",
    )
    assert split_location("no location") == (None, "no location")
    assert describe(int, "something msgspec never said") == "must be an integer"
    assert plain("Expected `array`, got `object`") == "must be an array, got an object"
