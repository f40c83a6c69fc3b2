"""POST /api/ingest/events: what is accepted and echoed, and that nothing invalid is enqueued."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import pytest

from ingest_producer.asgi import build_app
from ingest_shared import keys as k
from ingest_shared.redis_client import call
from ingest_shared.schema import JSON_ENCODER, format_ms, now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from httpx import AsyncClient as Client
    from redis.asyncio import Redis
    from tests.conftest import AppClient

URL = "/api/ingest/events"
MAX_BODY = 4_096
SETTINGS = Settings(
    stream_shards=1, max_clock_skew_ms=300_000, retention_ms=86_400_000, max_body_bytes=MAX_BODY
)
STREAM = SETTINGS.stream_key
GOOD = {"source": "sensor-a", "metric": "cpu", "value": 12.5}
KEY = "write-key-events-0123456789"
JSON = {"content-type": "application/json"}


@pytest.fixture
async def client(redis: Redis, redis_url: str, serve: AppClient) -> AsyncIterator[Client]:
    app = build_app(dataclasses.replace(SETTINGS, redis_url=redis_url))
    async with serve(app) as client:
        yield client


def event(**fields: object) -> dict[str, object]:
    return GOOD | fields


async def test_event_is_enqueued_once_and_echoed_with_its_stream_id(
    client: Client, redis: Redis
) -> None:
    at = format_ms(now_ms() - 1_500)

    response = await client.post(URL, json=event(occurredAt=at))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["value"] == {"source": "sensor-a", "metric": "cpu", "value": 12.5, "occurredAt": at}
    entries = await call(redis, "XRANGE", STREAM, "-", "+")
    assert [(entry_id.decode(), fields) for entry_id, fields in entries] == [
        (
            body["id"],
            {
                k.FIELD_SOURCE: b"sensor-a",
                k.FIELD_METRIC: b"cpu",
                k.FIELD_VALUE: b"12.5",
                k.FIELD_OCCURRED_AT: at.encode(),
            },
        )
    ]


async def test_missing_occurred_at_defaults_to_the_time_of_receipt(
    client: Client,
) -> None:
    before = now_ms()
    response = await client.post(URL, json=GOOD)
    after = now_ms()

    assert response.status_code == 200
    occurred = response.json()["value"]["occurredAt"]
    assert occurred in {format_ms(ms) for ms in range(before, after + 1)}


async def test_naive_occurred_at_is_taken_as_utc(client: Client) -> None:
    at = format_ms(now_ms() // 1000 * 1000 - 60_000)  # whole seconds: "...:SSZ"

    response = await client.post(URL, json=event(occurredAt=at.removesuffix("Z")))

    assert response.status_code == 200
    assert response.json()["value"]["occurredAt"] == at


async def test_occurred_at_with_an_offset_is_converted_to_utc(
    client: Client,
) -> None:
    utc_ms = now_ms() // 1000 * 1000 - 60_000
    utc = format_ms(utc_ms)
    # The same instant written two hours ahead, as a device in UTC+02:00 would send it.
    local = format_ms(utc_ms + 2 * 3_600_000).removesuffix("Z") + "+02:00"

    response = await client.post(URL, json=event(occurredAt=local))

    assert response.status_code == 200
    assert response.json()["value"]["occurredAt"] == utc


async def test_occurred_at_within_the_clock_skew_is_accepted(
    client: Client,
) -> None:
    response = await client.post(URL, json=event(occurredAt=format_ms(now_ms() + 60_000)))
    assert response.status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {"source": "dev:a@b/c-1_2.3"},
        {"metric": "cpu.load_1-m"},
        {"metric": "m" * 128, "source": "s" * 128},
        {"value": -3},
        {"value": 0},
        {"value": 1.7976931348623157e308},
        {"occurredAt": None},
        {"unknownField": {"ignored": [1, 2, 3]}},
    ],
    ids=repr,
)
async def test_valid_event_is_accepted(
    client: Client, redis: Redis, fields: dict[str, object]
) -> None:
    response = await client.post(URL, json=event(**fields))
    assert response.status_code == 200, response.text
    assert await redis.xlen(STREAM) == 1


def _far_future() -> str:
    return format_ms(now_ms() + SETTINGS.max_clock_skew_ms + 60_000)


def _too_old() -> str:
    return format_ms(now_ms() - SETTINGS.retention_ms - 60_000)


INVALID: list[tuple[str, dict[str, object], str]] = [
    ("metric with a trailing newline", {"metric": "cpu\n"}, "metric"),
    ("metric with a space", {"metric": "cpu load"}, "metric"),
    ("metric with a semicolon", {"metric": "cpu;1"}, "metric"),
    ("metric with braces", {"metric": "{cpu}"}, "metric"),
    ("empty metric", {"metric": ""}, "metric"),
    ("metric of 129 chars", {"metric": "m" * 129}, "metric"),
    ("source with a trailing newline", {"source": "sensor-a\n"}, "source"),
    ("source with a space", {"source": "sensor a"}, "source"),
    ("source with braces", {"source": "{sensor}"}, "source"),
    ("empty source", {"source": ""}, "source"),
    ("source of 129 chars", {"source": "s" * 129}, "source"),
    ("boolean value", {"value": True}, "value"),
    ("string value", {"value": "12.5"}, "value"),
    ("string NaN value", {"value": "NaN"}, "value"),
    ("null value", {"value": None}, "value"),
    ("occurredAt not RFC 3339", {"occurredAt": "yesterday"}, "occurredAt"),
    ("occurredAt as a number", {"occurredAt": 1_700_000_000}, "occurredAt"),
]


@pytest.mark.parametrize(
    ("fields", "field"), [(f, n) for _, f, n in INVALID], ids=[c for c, _, _ in INVALID]
)
async def test_schema_violation_is_422_naming_the_field_and_enqueues_nothing(
    client: Client, redis: Redis, fields: dict[str, object], field: str
) -> None:
    response = await client.post(URL, json=event(**fields))

    assert response.status_code == 422
    body = response.json()
    assert body["status_code"] == 422
    assert [error["field"] for error in body["errors"]] == [field]
    assert field in body["detail"]
    assert await redis.xlen(STREAM) == 0


@pytest.mark.parametrize("number", [b"1e400", b"-1e400"])
async def test_value_beyond_the_float_range_is_422_and_enqueues_nothing(
    client: Client, redis: Redis, number: bytes
) -> None:
    # JSON has no Infinity; 1e400 is how it reaches a decoder (as inf).
    body = b'{"source": "sensor-a", "metric": "cpu", "value": ' + number + b"}"

    response = await client.post(URL, content=body, headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["value"]
    assert await redis.xlen(STREAM) == 0


@pytest.mark.parametrize("occurred_at", [_far_future, _too_old], ids=["future", "too-old"])
async def test_occurred_at_outside_the_time_window_is_422_and_enqueues_nothing(
    client: Client, redis: Redis, occurred_at: Any
) -> None:
    response = await client.post(URL, json=event(occurredAt=occurred_at()))

    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["occurredAt"]
    assert await redis.xlen(STREAM) == 0


async def test_every_failing_field_is_named_in_one_response(client: Client, redis: Redis) -> None:
    response = await client.post(
        URL, json={"source": "a b", "metric": "cpu\n", "value": True, "occurredAt": "soon"}
    )

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == [
        "source",
        "metric",
        "value",
        "occurredAt",
    ]
    assert await redis.xlen(STREAM) == 0


@pytest.mark.parametrize("missing", ["source", "metric", "value"])
async def test_missing_required_field_is_422(client: Client, redis: Redis, missing: str) -> None:
    body = {name: value for name, value in GOOD.items() if name != missing}

    response = await client.post(URL, json=body)

    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": missing, "message": "required field is missing"}]
    assert await redis.xlen(STREAM) == 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"source": "sensor-a", "metric": "cpu", "value": 12.5',
        b"",
        b'{"source": "sensor-a", "metric": "cpu", "value": NaN}',
        b'{"source": "sensor-a", "metric": "cpu", "value": Infinity}',
        b"\xff\xfe{}",
    ],
    ids=["truncated", "empty", "NaN-literal", "Infinity-literal", "not-utf8"],
)
async def test_malformed_json_is_400_and_enqueues_nothing(
    client: Client, redis: Redis, body: bytes
) -> None:
    response = await client.post(URL, content=body, headers={"content-type": "application/json"})

    assert response.status_code == 400
    assert response.json()["status_code"] == 400
    assert await redis.xlen(STREAM) == 0


@pytest.mark.parametrize("body", [b"42", b'"text"', b"null", b"true"], ids=repr)
async def test_a_json_value_that_is_neither_object_nor_array_is_422(
    client: Client, redis: Redis, body: bytes
) -> None:
    response = await client.post(URL, content=body, headers=JSON)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] is None
    assert await redis.xlen(STREAM) == 0


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 50_000 + b"]" * 50_000,
        b'{"source": ' + b"[" * 50_000,
        b'{"x": ' + b"[" * 50_000 + b"]" * 50_000 + b', "source": "a", "metric": "m", "value": 1}',
    ],
    ids=["top-level", "in-a-known-field", "in-an-unknown-field"],
)
async def test_json_nested_50000_levels_deep_is_a_client_error(
    redis_url: str, redis: Redis, serve: AppClient, body: bytes
) -> None:
    # A body limit large enough for the nesting to reach the decoder.
    app = build_app(Settings(stream_shards=1, redis_url=redis_url))
    async with serve(app) as client:
        response = await client.post(URL, content=body, headers=JSON)

    assert response.status_code in {400, 422}
    assert response.json()["status_code"] == response.status_code
    assert await redis.xlen(STREAM) == 0


async def test_body_up_to_the_limit_is_read_and_one_byte_more_is_413(
    client: Client, redis: Redis
) -> None:
    payload = JSON_ENCODER.encode(GOOD)
    at_limit = payload + b" " * (MAX_BODY - len(payload))

    accepted = await client.post(URL, content=at_limit, headers=JSON)
    rejected = await client.post(URL, content=at_limit + b" ", headers=JSON)

    assert accepted.status_code == 200
    assert rejected.status_code == 413
    assert rejected.json()["status_code"] == 413
    assert await redis.xlen(STREAM) == 1


async def test_the_default_body_limit_is_one_mebibyte(
    redis_url: str, redis: Redis, serve: AppClient
) -> None:
    payload = JSON_ENCODER.encode(GOOD)
    at_limit = payload + b" " * (1024 * 1024 - len(payload))
    async with serve(build_app(Settings(stream_shards=1, redis_url=redis_url))) as client:
        accepted = await client.post(URL, content=at_limit, headers=JSON)
        rejected = await client.post(URL, content=at_limit + b" ", headers=JSON)

    assert (accepted.status_code, rejected.status_code) == (200, 413)
    assert await redis.xlen(STREAM) == 1


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "application/vnd.telemetry+json"],
)
async def test_json_content_types_are_accepted(client: Client, content_type: str) -> None:
    response = await client.post(
        URL, content=JSON_ENCODER.encode(GOOD), headers={"content-type": content_type}
    )
    assert response.status_code == 200


async def test_without_api_keys_a_body_without_content_type_is_415_and_enqueues_nothing(
    client: Client, redis: Redis
) -> None:
    # What any web page can make a browser send cross-site without asking (fetch no-cors).
    response = await client.post(URL, content=JSON_ENCODER.encode(GOOD))
    assert "content-type" not in response.request.headers
    assert response.status_code == 415
    assert "Content-Type is required" in response.json()["detail"]
    assert await redis.xlen(STREAM) == 0
    process = await client.post("/api/ingest/workers/process", content=b'{"consumer":"c"}')
    assert process.status_code == 415


async def test_with_a_write_key_a_body_without_content_type_is_read_as_json(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    settings = dataclasses.replace(SETTINGS, redis_url=redis_url, write_keys=frozenset({KEY}))
    async with serve(build_app(settings)) as client:
        response = await client.post(
            URL, content=JSON_ENCODER.encode(GOOD), headers={"authorization": f"Bearer {KEY}"}
        )
    assert "content-type" not in response.request.headers
    assert response.status_code == 200
    assert await redis.xlen(STREAM) == 1


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
)
async def test_other_content_types_are_415_and_enqueue_nothing(
    client: Client, redis: Redis, content_type: str
) -> None:
    response = await client.post(
        URL, content=JSON_ENCODER.encode(GOOD), headers={"content-type": content_type}
    )

    assert response.status_code == 415
    assert response.json()["status_code"] == 415
    assert await redis.xlen(STREAM) == 0


async def test_unknown_route_is_a_json_404(client: Client) -> None:
    response = await client.get("/api/ingest/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"status_code": 404, "detail": "Not Found", "errors": []}
