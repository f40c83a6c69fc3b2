"""Replay-all gets past dead letters it cannot replay: it skips them, says why, and goes on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from tests.readside import BASE_MS, app_client

from ingest_producer.reading import deadletters
from ingest_shared import keys as k
from ingest_shared.redis_client import call
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings
from ingest_shared.streams import dead_letter_fields

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis
    from tests.readside import Client

REPLAY = "/api/ingest/dead-letters/replay"
ONE_SHARD = Settings(stream_shards=1)
TWO_SHARDS = Settings(stream_shards=2)


def payload(value: str = "1.5", at: int = BASE_MS) -> dict[bytes, bytes]:
    return {
        k.FIELD_SOURCE: b"sensor-a",
        k.FIELD_METRIC: b"cpu",
        k.FIELD_VALUE: value.encode(),
        k.FIELD_OCCURRED_AT: format_ms(at).encode(),
    }


async def dead_letter(redis: Redis, fields: dict[bytes, bytes], shard: int | None = None) -> str:
    """Append one dead letter (to ``shard``'s of two, or the one shard's); its stream id."""
    shards = ONE_SHARD.keys.shards if shard is None else TWO_SHARDS.keys.shards
    stream = shards[shard or 0].dead_letter
    entry = dead_letter_fields(b"1700000000000-0", "old reason", fields, "w1", now_ms())
    added: bytes = await redis.xadd(stream, entry)  # type: ignore[assignment]
    return added.decode()


async def left(redis: Redis, stream: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in await call(redis, "XRANGE", stream, "-", "+")]


async def replay(client: Client, body: dict[str, Any], **query: str) -> Any:
    response = await client.post(REPLAY, json=body, params=query)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
async def client(redis: Redis, redis_url: str) -> AsyncIterator[Client]:
    async with app_client(ONE_SHARD, redis_url) as c:
        yield c


async def test_replay_all_skips_invalid_letters_and_replays_the_valid_ones_behind_them(
    client: Client, redis: Redis
) -> None:
    invalid = [await dead_letter(redis, payload("NaN")) for _ in range(5)]
    valid = [await dead_letter(redis, payload(str(i))) for i in range(3)]

    body = await replay(client, {"all": True, "max": 2})

    assert body["replayed"] == 2
    assert [s["id"] for s in body["still_invalid"]] == invalid
    assert {s["reason"] for s in body["still_invalid"]} == {"value: must be a finite number"}
    assert body["missing"] == []
    assert await left(redis, ONE_SHARD.keys.dead_letter) == [*invalid, valid[2]]


async def test_skipping_stops_at_its_limit_and_after_goes_on_from_the_last_skipped(
    client: Client, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deadletters, "MAX_SKIPPED", 3)
    monkeypatch.setattr(deadletters, "REPLAY_CHUNK", 2)  # several reads per call
    invalid = [await dead_letter(redis, payload("x")) for _ in range(4)]
    valid = [await dead_letter(redis, payload(str(i))) for i in range(2)]

    first = await replay(client, {"all": True})
    second = await replay(client, {"all": True}, after=first["still_invalid"][-1]["id"])

    assert (first["replayed"], [s["id"] for s in first["still_invalid"]]) == (0, invalid[:3])
    assert (second["replayed"], [s["id"] for s in second["still_invalid"]]) == (2, invalid[3:])
    assert await left(redis, ONE_SHARD.keys.dead_letter) == invalid
    assert valid  # replayed by the second call


async def test_a_reason_starts_with_the_field_it_is_about(client: Client, redis: Redis) -> None:
    future = await dead_letter(redis, payload(at=now_ms() + 3_600_000))

    [still] = (await replay(client, {"ids": [future]}))["still_invalid"]

    assert still["reason"].startswith("occurredAt: is more than ")


@pytest.mark.parametrize(
    ("body", "after"),
    [({"all": True}, "yesterday"), ({"all": True}, "1-0@0"), ({"all": True}, "1-0-0")],
)
async def test_a_bad_after_is_422(client: Client, body: dict[str, Any], after: str) -> None:
    response = await client.post(REPLAY, json=body, params={"after": after})

    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["after"]


async def test_replay_all_goes_through_every_shard_oldest_first(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deadletters, "REPLAY_CHUNK", 2)
    letters = []
    for i in range(3):
        for shard in (0, 1):
            value = "1.5" if (i, shard) == (2, 1) else "bad"
            letters.append(f"{await dead_letter(redis, payload(value), shard)}@{shard}")

    async with app_client(TWO_SHARDS, redis_url) as client:
        body = await replay(client, {"all": True, "max": 1})

    def order(letter: str) -> tuple[int, ...]:
        entry_id, _, shard = letter.partition("@")
        return (*map(int, entry_id.split("-")), int(shard))

    # Every invalid one, in (id, shard) order, was skipped on the way to the valid one.
    assert body["replayed"] == 1
    assert [s["id"] for s in body["still_invalid"]] == sorted(letters[:5], key=order)
