"""Reading request bodies: Content-Type rules and how decoding failures become 400/415/422."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import msgspec
import pytest
from litestar.exceptions import HTTPException, ValidationException

from ingest_producer.jsonbody import decode_json, field_errors, require_json
from ingest_producer.models import FieldError, ProcessRequest
from ingest_shared.schema import EVENT_DECODER, TelemetryEvent

if TYPE_CHECKING:
    from litestar.types import Scope


def scope(*headers: tuple[bytes, bytes]) -> Scope:
    return cast("Scope", {"type": "http", "headers": list(headers)})


@pytest.mark.parametrize(
    "value",
    [
        b"application/json",
        b"Application/JSON",
        b"application/json; charset=utf-8",
        b"application/json;charset=UTF-8",
        b"application/vnd.telemetry+json",
        b" application/json ",
    ],
)
def test_json_content_types_pass(value: bytes) -> None:
    require_json(scope((b"accept", b"*/*"), (b"content-type", value)))


def test_a_missing_content_type_is_read_as_json() -> None:
    require_json(scope((b"accept", b"*/*")))


@pytest.mark.parametrize(
    "value",
    [b"text/plain", b"application/x-www-form-urlencoded", b"application/jsonp", b"text/json", b""],
)
def test_other_content_types_are_415(value: bytes) -> None:
    with pytest.raises(HTTPException) as caught:
        require_json(scope((b"content-type", value)))
    assert caught.value.status_code == 415


def test_a_valid_body_decodes_to_the_struct() -> None:
    event = decode_json(b'{"source": "a", "metric": "m", "value": 1}', EVENT_DECODER)
    assert event == TelemetryEvent("a", "m", 1.0)


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b'{"value": NaN}', b"\xff", b'{"source": "a", "metric": "m", "value": 1} x'],
    ids=["empty", "truncated", "NaN", "not-utf8", "trailing-garbage"],
)
def test_malformed_json_is_400(body: bytes) -> None:
    with pytest.raises(HTTPException) as caught:
        decode_json(body, EVENT_DECODER)
    assert caught.value.status_code == 400
    assert not isinstance(caught.value, ValidationException)


def test_recursion_error_from_deep_nesting_is_400() -> None:
    body = b'{"skipped": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    with pytest.raises(HTTPException) as caught:
        decode_json(body, EVENT_DECODER)
    assert caught.value.status_code == 400
    assert "nested" in caught.value.detail


def test_schema_violation_is_422_with_the_field_errors_as_extra() -> None:
    with pytest.raises(ValidationException) as caught:
        decode_json(b'{"source": "a", "metric": "m", "value": "1"}', EVENT_DECODER)
    assert caught.value.status_code == 422
    assert caught.value.extra == [FieldError("value", "must be a finite number, got a string")]
    assert caught.value.detail == "validation failed: value: must be a finite number, got a string"


def _first_error(body: bytes, struct: type[msgspec.Struct]) -> msgspec.ValidationError:
    try:
        msgspec.json.decode(body, type=struct)
    except msgspec.ValidationError as exc:
        return exc
    raise AssertionError(body)


def test_field_errors_name_every_failing_and_missing_field() -> None:
    body = b'{"source": "a b", "value": true, "occurredAt": "noon"}'

    errors = field_errors(body, TelemetryEvent, _first_error(body, TelemetryEvent))

    assert [(e.field, e.message) for e in errors] == [
        ("source", "must be 1\u2013128 characters: letters, digits, `_ . : @ / -`"),
        ("metric", "required field is missing"),
        ("value", "must be a finite number, got a boolean"),
        ("occurredAt", "must be an RFC 3339 date-time such as 2026-01-31T12:00:00Z"),
    ]


def test_field_errors_of_a_non_object_body_concern_the_whole_body() -> None:
    body = b"[1, 2]"

    errors = field_errors(body, TelemetryEvent, _first_error(body, TelemetryEvent))

    assert errors == [FieldError(None, "must be a JSON object, got an array")]


def test_field_errors_report_the_process_request_rules() -> None:
    body = b'{"consumer": "a\\n", "count": 0}'

    errors = field_errors(body, ProcessRequest, _first_error(body, ProcessRequest))

    assert [e.field for e in errors] == ["consumer", "count"]
