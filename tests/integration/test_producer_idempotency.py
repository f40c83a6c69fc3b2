"""Idempotency-Key on POST /api/ingest/events: retries answer the original and enqueue once."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
from typing import TYPE_CHECKING

import pytest

from ingest_producer.asgi import build_app
from ingest_shared.schema import JSON_ENCODER, format_ms, now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from httpx import AsyncClient as Client
    from redis.asyncio import Redis
    from tests.conftest import AppClient

URL = "/api/ingest/events"
KEY_A = "write-key-a-0123456789"
KEY_B = "write-key-b-0123456789"
SETTINGS = Settings(stream_shards=1, write_keys=frozenset({KEY_A, KEY_B}), idempotency_ttl_s=3_600)
STREAM = SETTINGS.stream_key
EVENT = {"source": "sensor-a", "metric": "cpu", "value": 12.5}  # occurredAt: time of receipt
BATCH = [EVENT | {"value": float(i)} for i in range(5)]


def headers(idempotency_key: str | bytes, api_key: str = KEY_A) -> dict[bytes, bytes]:
    key = idempotency_key.encode() if isinstance(idempotency_key, str) else idempotency_key
    return {b"Idempotency-Key": key, b"Authorization": f"Bearer {api_key}".encode()}


@pytest.fixture
async def client(redis: Redis, redis_url: str, serve: AppClient) -> AsyncIterator[Client]:
    async with serve(build_app(dataclasses.replace(SETTINGS, redis_url=redis_url))) as client:
        yield client


@pytest.mark.parametrize("body", [EVENT, BATCH], ids=["one-event", "batch"])
async def test_a_repeat_answers_the_original_body_and_enqueues_nothing(
    client: Client, redis: Redis, body: object
) -> None:
    first = await client.post(URL, json=body, headers=headers("retry-1"))
    await asyncio.sleep(0.01)  # a later occurredAt, were the event accepted again
    again = await client.post(URL, json=body, headers=headers("retry-1"))

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.content == first.content
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert await redis.xlen(STREAM) == (1 if body is EVENT else len(BATCH))


async def test_the_original_occurred_at_is_answered_to_a_repeat(
    client: Client, redis: Redis
) -> None:
    first = await client.post(URL, json=EVENT, headers=headers("retry-2"))
    await asyncio.sleep(0.05)
    again = await client.post(URL, json=EVENT, headers=headers("retry-2"))

    assert again.json()["value"]["occurredAt"] == first.json()["value"]["occurredAt"]
    assert again.json()["id"] == first.json()["id"]


@pytest.mark.parametrize("body", [EVENT, BATCH], ids=["one-event", "batch"])
async def test_concurrent_repeats_enqueue_once(client: Client, redis: Redis, body: object) -> None:
    responses = await asyncio.gather(
        *(client.post(URL, json=body, headers=headers("storm")) for _ in range(20))
    )

    assert [r.status_code for r in responses] == [200] * 20
    assert len({r.content for r in responses}) == 1
    assert sum("idempotent-replayed" in r.headers for r in responses) == 19
    assert await redis.xlen(STREAM) == (1 if body is EVENT else len(BATCH))


async def test_the_same_key_with_another_body_is_409_and_enqueues_nothing(
    client: Client, redis: Redis
) -> None:
    first = await client.post(URL, json=EVENT, headers=headers("retry-3"))
    other = await client.post(URL, json=EVENT | {"value": 13.5}, headers=headers("retry-3"))

    assert (first.status_code, other.status_code) == (200, 409)
    assert other.json()["status_code"] == 409
    assert await redis.xlen(STREAM) == 1


async def test_ndjson_and_json_with_the_same_key_and_bytes_are_different_requests(
    client: Client, redis: Redis
) -> None:
    line = JSON_ENCODER.encode(EVENT)
    as_json = await client.post(URL, content=line, headers=headers("retry-4"))
    as_ndjson = await client.post(
        URL, content=line, headers=headers("retry-4") | {b"content-type": b"application/x-ndjson"}
    )

    assert (as_json.status_code, as_ndjson.status_code) == (200, 409)


async def test_the_body_is_compared_after_decompression(client: Client, redis: Redis) -> None:
    body = JSON_ENCODER.encode(BATCH)
    plain = await client.post(URL, content=body, headers=headers("retry-5"))
    zipped = await client.post(
        URL,
        content=gzip.compress(body, mtime=1),
        headers=headers("retry-5") | {b"content-encoding": b"gzip"},
    )

    assert zipped.status_code == 200
    assert zipped.content == plain.content
    assert await redis.xlen(STREAM) == len(BATCH)


async def test_keys_are_scoped_to_the_api_key(client: Client, redis: Redis) -> None:
    a = await client.post(URL, json=EVENT, headers=headers("shared-name", KEY_A))
    b = await client.post(URL, json=BATCH, headers=headers("shared-name", KEY_B))

    assert (a.status_code, b.status_code) == (200, 200)
    assert "idempotent-replayed" not in b.headers
    assert await redis.xlen(STREAM) == 1 + len(BATCH)


async def test_a_refused_request_does_not_use_up_its_key(client: Client, redis: Redis) -> None:
    refused = await client.post(URL, json=EVENT | {"value": "NaN"}, headers=headers("retry-6"))
    fixed = await client.post(URL, json=EVENT, headers=headers("retry-6"))

    assert (refused.status_code, fixed.status_code) == (422, 200)
    assert await redis.xlen(STREAM) == 1


async def test_the_stored_response_expires_after_the_ttl(client: Client, redis: Redis) -> None:
    await client.post(URL, json=EVENT, headers=headers("retry-7"))

    [stored] = [key async for key in redis.scan_iter(match="*idempotency*")]
    assert b"retry-7" not in stored  # a digest, never the client's key itself
    assert 3_590_000 < await redis.pttl(stored) <= SETTINGS.idempotency_ttl_s * 1000


@pytest.mark.parametrize(
    "value",
    [b"", b"k" * 257, "clé".encode(), b"tab\there", b" key", b"key "],
    # A space at either end: HTTP servers strip it, so the documented pattern excludes it.
    ids=["empty", "257-chars", "non-ascii", "control-char", "leading-space", "trailing-space"],
)
async def test_a_malformed_idempotency_key_is_422_and_enqueues_nothing(
    client: Client, redis: Redis, value: bytes
) -> None:
    response = await client.post(URL, json=EVENT, headers=headers(value))

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"
    assert await redis.xlen(STREAM) == 0


@pytest.mark.parametrize("value", ["~" * 256, "order 42/retry #1"], ids=["256-chars", "spaces"])
async def test_printable_keys_up_to_256_characters_are_accepted(client: Client, value: str) -> None:
    response = await client.post(URL, json=EVENT, headers=headers(value))
    assert response.status_code == 200


async def test_occurred_at_given_by_the_client_is_kept_on_a_repeat(
    client: Client, redis: Redis
) -> None:
    body = EVENT | {"occurredAt": format_ms(now_ms() - 5_000)}
    first = await client.post(URL, json=body, headers=headers("retry-8"))
    again = await client.post(URL, json=body, headers=headers("retry-8"))
    assert again.content == first.content
