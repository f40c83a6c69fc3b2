"""Batches on POST /api/ingest/events: JSON arrays, NDJSON and gzip, validated whole."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import time
import tracemalloc
import zlib
from typing import TYPE_CHECKING

import pytest

from ingest_producer.asgi import build_app
from ingest_producer.jsonbody import MAX_LISTED_ERRORS
from ingest_producer.models import BatchEnqueued
from ingest_shared import keys as k
from ingest_shared.redis_client import call
from ingest_shared.schema import JSON_ENCODER, format_ms, now_ms, to_epoch_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from httpx import AsyncClient as Client
    from redis.asyncio import Redis
    from tests.conftest import AppClient

URL = "/api/ingest/events"
MAX_BATCH = 200
MAX_BODY = 64 * 1024
SETTINGS = Settings(stream_shards=1, max_batch=MAX_BATCH, max_body_bytes=MAX_BODY)
STREAM = SETTINGS.stream_key
JSON = {"content-type": "application/json"}
NDJSON = {"content-type": "application/x-ndjson"}
GZIP = {"content-encoding": "gzip"}
AT = format_ms(now_ms() // 1000 * 1000 - 60_000)


@pytest.fixture
async def client(redis: Redis, redis_url: str, serve: AppClient) -> AsyncIterator[Client]:
    async with serve(build_app(dataclasses.replace(SETTINGS, redis_url=redis_url))) as client:
        yield client


def events(count: int, **fields: object) -> list[dict[str, object]]:
    """``count`` valid events whose value is their position."""
    base = {"source": "sensor-a", "metric": "cpu", "occurredAt": AT}
    return [base | {"value": float(i)} | fields for i in range(count)]


def ndjson(items: list[dict[str, object]], separator: bytes = b"\n") -> bytes:
    return separator.join(JSON_ENCODER.encode(item) for item in items) + separator


async def stream(redis: Redis) -> list[tuple[str, dict[bytes, bytes]]]:
    entries = await call(redis, "XRANGE", STREAM, "-", "+")
    return [(entry_id.decode(), fields) for entry_id, fields in entries]


async def test_batch_is_enqueued_in_input_order_and_answered_with_its_ids(
    client: Client, redis: Redis
) -> None:
    batch = events(25)

    response = await client.post(URL, json=batch)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 25
    assert response.content == JSON_ENCODER.encode(BatchEnqueued(body["ids"], 25))
    entries = await stream(redis)
    assert [entry_id for entry_id, _ in entries] == body["ids"]
    assert [fields[k.FIELD_VALUE] for _, fields in entries] == [
        repr(float(i)).encode() for i in range(25)
    ]
    assert entries[0][1] == {
        k.FIELD_SOURCE: b"sensor-a",
        k.FIELD_METRIC: b"cpu",
        k.FIELD_VALUE: b"0.0",
        k.FIELD_OCCURRED_AT: AT.encode(),
    }


async def test_a_batch_without_occurred_at_is_stamped_in_stream_order_at_append(
    client: Client, redis: Redis
) -> None:
    # Mixed: explicit times are kept; the others get the append's time, whichever request
    # reached Redis first, so stamps never go back in stream order.
    for round_ in range(5):
        batch = [
            {"source": "sensor-a", "metric": "cpu", "value": 1.0},
            {"source": "sensor-b", "metric": "cpu", "value": 2.0, "occurredAt": AT},
            {"source": "sensor-c", "metric": "cpu", "value": 3.0 + round_},
        ]
        response = await client.post(URL, json=batch)
        assert response.status_code == 200, response.text
    stamps = []
    for entry_id, fields in await stream(redis):
        occurred = fields[k.FIELD_OCCURRED_AT].decode()
        if fields[k.FIELD_SOURCE] == b"sensor-b":
            assert occurred == AT
            continue
        ms = to_epoch_ms(dt.datetime.fromisoformat(occurred))
        assert format_ms(ms) == occurred
        # The function's clock, read in the same call as the entry's id was made.
        assert 0 <= ms - int(entry_id.split("-")[0]) <= 2
        stamps.append(ms)
    assert len(stamps) == 10
    assert stamps == sorted(stamps)


async def test_batch_is_appended_in_one_round_trip(client: Client, redis: Redis) -> None:
    await client.post(URL, json=events(1))  # loads the function library
    await redis.config_resetstat()

    response = await client.post(URL, json=events(150))

    assert response.status_code == 200
    stats = await redis.info("commandstats")
    assert stats["cmdstat_fcall"]["calls"] == 1
    assert stats["cmdstat_xadd"]["calls"] == 150


async def test_one_invalid_event_fails_the_batch_with_per_event_errors_and_enqueues_nothing(
    client: Client, redis: Redis
) -> None:
    batch = events(10)
    batch[3]["metric"] = "cpu load"
    batch[7]["value"] = True
    batch[8].pop("source")
    batch[9]["occurredAt"] = format_ms(now_ms() + SETTINGS.max_clock_skew_ms + 60_000)

    response = await client.post(URL, json=batch)

    assert response.status_code == 422
    body = response.json()
    # The schema errors are found first; the time window is checked once every event parses.
    assert [(e["index"], e["field"]) for e in body["errors"]] == [
        (3, "metric"),
        (7, "value"),
        (8, "source"),
    ]
    assert "3 of 10 events" in body["detail"]
    assert await redis.xlen(STREAM) == 0


async def test_an_event_outside_the_time_window_fails_the_batch(
    client: Client, redis: Redis
) -> None:
    batch = events(5)
    batch[2]["occurredAt"] = format_ms(now_ms() - SETTINGS.retention_ms - 60_000)

    response = await client.post(URL, json=batch)

    assert response.status_code == 422
    assert [(e["index"], e["field"]) for e in response.json()["errors"]] == [(2, "occurredAt")]
    assert await redis.xlen(STREAM) == 0


async def test_errors_listed_are_capped_but_every_invalid_event_is_counted(
    client: Client, redis: Redis
) -> None:
    response = await client.post(URL, json=events(MAX_BATCH, metric="no spaces allowed"))

    assert response.status_code == 422
    body = response.json()
    assert len(body["errors"]) == MAX_LISTED_ERRORS
    assert f"{MAX_BATCH} of {MAX_BATCH} events" in body["detail"]
    assert await redis.xlen(STREAM) == 0


async def test_a_batch_of_max_batch_events_is_accepted(client: Client, redis: Redis) -> None:
    response = await client.post(URL, json=events(MAX_BATCH))
    assert response.status_code == 200
    assert await redis.xlen(STREAM) == MAX_BATCH


@pytest.mark.parametrize("valid", [True, False], ids=["valid", "invalid"])
async def test_more_than_max_batch_events_is_413_and_enqueues_nothing(
    client: Client, redis: Redis, valid: bool
) -> None:
    batch = events(MAX_BATCH + 1, **({} if valid else {"value": "x"}))

    response = await client.post(URL, json=batch)

    assert response.status_code == 413
    assert "INGEST_MAX_BATCH" in response.json()["detail"]
    assert await redis.xlen(STREAM) == 0


async def test_an_empty_batch_enqueues_nothing(client: Client, redis: Redis) -> None:
    response = await client.post(URL, content=b" [ ] ", headers=JSON)
    assert response.status_code == 200
    assert response.json() == {"ids": [], "count": 0}
    assert await redis.xlen(STREAM) == 0


async def test_a_malformed_array_is_400(client: Client, redis: Redis) -> None:
    body = JSON_ENCODER.encode(events(3))[:-1]
    response = await client.post(URL, content=b"\n\t " + body, headers=JSON)
    assert response.status_code == 400
    assert await redis.xlen(STREAM) == 0


async def test_ndjson_is_enqueued_line_by_line_ignoring_blank_lines(
    client: Client, redis: Redis
) -> None:
    lines = [JSON_ENCODER.encode(item) for item in events(4)]
    body = b"\r\n".join([lines[0], b"", lines[1], b"   ", lines[2], lines[3]]) + b"\r\n\n"

    response = await client.post(URL, content=body, headers=NDJSON)

    assert response.status_code == 200, response.text
    ids = response.json()["ids"]
    entries = await stream(redis)
    assert [entry_id for entry_id, _ in entries] == ids
    assert [fields[k.FIELD_VALUE] for _, fields in entries] == [b"0.0", b"1.0", b"2.0", b"3.0"]


async def test_an_invalid_ndjson_line_fails_the_batch_with_its_index(
    client: Client, redis: Redis
) -> None:
    batch = events(4)
    batch[2]["source"] = "a b"

    response = await client.post(URL, content=ndjson(batch, b"\n\n"), headers=NDJSON)

    assert response.status_code == 422
    assert [(e["index"], e["field"]) for e in response.json()["errors"]] == [(2, "source")]
    assert await redis.xlen(STREAM) == 0


async def test_a_malformed_ndjson_line_is_400_naming_it(client: Client, redis: Redis) -> None:
    body = ndjson(events(2)) + b'{"source": "a",\n'

    response = await client.post(URL, content=body, headers=NDJSON)

    assert response.status_code == 400
    assert "event 2" in response.json()["detail"]
    assert await redis.xlen(STREAM) == 0


async def test_ndjson_over_max_batch_is_413(client: Client, redis: Redis) -> None:
    response = await client.post(URL, content=ndjson(events(MAX_BATCH + 1)), headers=NDJSON)
    assert response.status_code == 413
    assert await redis.xlen(STREAM) == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/jsonl+xml", "text/csv"])
async def test_other_content_types_are_415(client: Client, redis: Redis, content_type: str) -> None:
    response = await client.post(
        URL, content=ndjson(events(1)), headers={"content-type": content_type}
    )
    assert response.status_code == 415
    assert "application/x-ndjson" in response.json()["detail"]
    assert await redis.xlen(STREAM) == 0


@pytest.mark.parametrize(
    ("body", "headers", "count"),
    [
        (JSON_ENCODER.encode(events(1)[0]), JSON, None),
        (JSON_ENCODER.encode(events(30)), JSON, 30),
        (ndjson(events(30)), NDJSON, 30),
    ],
    ids=["one-event", "json-array", "ndjson"],
)
async def test_gzip_bodies_are_decompressed(
    client: Client, redis: Redis, body: bytes, headers: dict[str, str], count: int | None
) -> None:
    response = await client.post(URL, content=gzip.compress(body), headers=headers | GZIP)

    assert response.status_code == 200, response.text
    if count is None:
        assert response.json()["value"]["occurredAt"] == AT
    else:
        assert response.json()["count"] == count
    assert await redis.xlen(STREAM) == (count or 1)


async def test_concatenated_gzip_members_are_one_body(client: Client, redis: Redis) -> None:
    body = ndjson(events(6))
    half = body.index(b"\n", len(body) // 2) + 1
    compressed = gzip.compress(body[:half]) + gzip.compress(body[half:])

    response = await client.post(URL, content=compressed, headers=NDJSON | GZIP)

    assert response.status_code == 200, response.text
    assert response.json()["count"] == 6


async def test_gzip_bomb_is_413_quickly_without_inflating_it(client: Client, redis: Redis) -> None:
    bomb = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    compressed = bomb.compress(b"\0" * 50_000_000) + bomb.flush()  # ~50 KB
    assert len(compressed) < MAX_BODY

    tracemalloc.start()
    started = time.perf_counter()
    try:
        response = await client.post(URL, content=compressed, headers=JSON | GZIP)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert response.status_code == 413
    assert "decompressed" in response.json()["detail"]
    assert elapsed < 1.0
    assert peak < 16 * MAX_BODY  # a few copies of the limit at most, never the 50 MB
    assert await redis.xlen(STREAM) == 0


async def test_a_body_exactly_at_the_limit_once_decompressed_is_accepted(
    client: Client, redis: Redis
) -> None:
    payload = JSON_ENCODER.encode(events(1)[0])
    at_limit = payload + b" " * (MAX_BODY - len(payload))

    accepted = await client.post(URL, content=gzip.compress(at_limit), headers=JSON | GZIP)
    rejected = await client.post(URL, content=gzip.compress(at_limit + b" "), headers=JSON | GZIP)

    assert (accepted.status_code, rejected.status_code) == (200, 413)
    assert await redis.xlen(STREAM) == 1


@pytest.mark.parametrize(
    "body",
    [b"not gzip at all", gzip.compress(b'{"source": "a"}')[:-6], gzip.compress(b"{}") + b"junk"],
    ids=["not-gzip", "truncated", "trailing-garbage"],
)
async def test_malformed_gzip_is_400(client: Client, redis: Redis, body: bytes) -> None:
    response = await client.post(URL, content=body, headers=JSON | GZIP)
    assert response.status_code == 400
    assert "gzip" in response.json()["detail"]
    assert await redis.xlen(STREAM) == 0


async def test_other_content_encodings_are_415(client: Client, redis: Redis) -> None:
    body = JSON_ENCODER.encode(events(1)[0])
    response = await client.post(URL, content=body, headers={"content-encoding": "br"})
    assert response.status_code == 415
    assert await redis.xlen(STREAM) == 0


async def test_openapi_documents_batches_ndjson_and_every_error(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    operation = schema["paths"]["/api/ingest/events"]["post"]

    content = operation["requestBody"]["content"]
    assert [s.get("type") for s in content["application/json"]["schema"]["oneOf"]] == [
        "object",
        "array",
    ]
    assert content["application/json"]["schema"]["oneOf"][1]["maxItems"] == MAX_BATCH
    assert "application/x-ndjson" in content
    assert {p["name"] for p in operation["parameters"]} >= {"Idempotency-Key", "Content-Encoding"}
    assert set(operation["responses"]) >= {
        "200",
        "401",
        "403",
        "409",
        "413",
        "415",
        "422",
        "429",
        "503",
    }
    assert "Retry-After" in operation["responses"]["429"]["headers"]
    assert "Retry-After" in operation["responses"]["503"]["headers"]
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]["oneOf"]
    assert ok[1]["properties"].keys() == {"ids", "count"}
