"""Dead letters: list, replay (atomic per entry), delete, purge."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError
from tests.readside import BASE_MS, app_client

from ingest_shared import keys as k
from ingest_shared.functions import replay_dead_letters
from ingest_shared.redis_client import call
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings
from ingest_shared.streams import dead_letter_fields

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.readside import Client

SETTINGS = Settings(stream_shards=1)
KEYS = SETTINGS.keys
DL = KEYS.dead_letter
REPLAY = "/api/ingest/dead-letters/replay"


@pytest.fixture
async def client(redis: Redis, redis_url: str) -> AsyncIterator[Client]:
    async with app_client(SETTINGS, redis_url) as c:
        yield c


def fields(value: str = "1.5", *, metric: str = "cpu", at: int = BASE_MS) -> dict[bytes, bytes]:
    return {
        k.FIELD_SOURCE: b"sensor-a",
        k.FIELD_METRIC: metric.encode(),
        k.FIELD_VALUE: value.encode(),
        k.FIELD_OCCURRED_AT: format_ms(at).encode(),
    }


async def dead_letter(
    redis: Redis,
    payload: dict[bytes, bytes] | None,
    reason: str = "max deliveries exceeded",
    message_id: bytes = b"1700000000000-0",
    letter_id: str = "*",
) -> str:
    entry = dead_letter_fields(message_id, reason, payload, "w1", now_ms())
    return await xadd(redis, entry, letter_id)


async def xadd(redis: Redis, entry: dict[Any, Any], letter_id: str = "*") -> str:
    added: bytes = await redis.xadd(DL, entry, id=letter_id)  # type: ignore[assignment]
    return added.decode()


async def letter_ids(redis: Redis) -> list[str]:
    return [entry_id.decode() for entry_id, _ in await call(redis, "XRANGE", DL, "-", "+")]


async def stream_values(redis: Redis) -> list[dict[str, str]]:
    entries = await call(redis, "XRANGE", KEYS.stream, "-", "+")
    return [{n.decode(): v.decode() for n, v in f.items()} for _, f in entries]


async def replay(client: Client, body: Any) -> Any:
    response = await client.post(REPLAY, json=body)
    assert response.status_code == 200, response.text
    return response.json()


# --- list ---------------------------------------------------------------------------------


async def test_dead_letters_are_listed_newest_first_with_the_payload_as_an_object(
    client: Client, redis: Redis
) -> None:
    first = await dead_letter(redis, fields("1"), reason="first")
    second = await dead_letter(redis, fields("2"), reason="second")

    response = await client.get("/api/ingest/dead-letters")

    assert response.status_code == 200
    body = response.json()
    assert body["next"] is None
    assert [(d["id"], d["reason"]) for d in body["deadLetters"]] == [
        (second, "second"),
        (first, "first"),
    ]
    letter = body["deadLetters"][0]
    assert letter["payload"] == {k.decode(): v.decode() for k, v in fields("2").items()}
    assert (letter["messageId"], letter["consumer"]) == ("1700000000000-0", "w1")
    assert letter["failedAt"].endswith("Z")


async def test_odd_dead_letters_show_text_payloads_and_null_fields(
    client: Client, redis: Redis
) -> None:
    await redis.xadd(DL, {"reason": "by hand", "payload": "not json {"})
    await redis.xadd(DL, {"payload": "[1, 2]"})

    body = (await client.get("/api/ingest/dead-letters")).json()

    assert [(d["payload"], d["reason"], d["messageId"]) for d in body["deadLetters"]] == [
        ("[1, 2]", None, None),
        ("not json {", "by hand", None),
    ]


async def test_pages_follow_the_before_cursor(client: Client, redis: Redis) -> None:
    ids = [await dead_letter(redis, fields(str(i))) for i in range(5)]

    first = (await client.get("/api/ingest/dead-letters", params={"count": 2})).json()
    second = (
        await client.get("/api/ingest/dead-letters", params={"count": 2, "before": first["next"]})
    ).json()
    last = (
        await client.get("/api/ingest/dead-letters", params={"count": 2, "before": second["next"]})
    ).json()

    assert [d["id"] for d in first["deadLetters"]] == [ids[4], ids[3]]
    assert [d["id"] for d in second["deadLetters"]] == [ids[2], ids[1]]
    assert ([d["id"] for d in last["deadLetters"]], last["next"]) == ([ids[0]], None)


async def test_the_default_page_is_twenty(client: Client, redis: Redis) -> None:
    for i in range(25):
        await dead_letter(redis, fields(str(i)))

    body = (await client.get("/api/ingest/dead-letters")).json()

    assert len(body["deadLetters"]) == 20
    assert body["next"] == body["deadLetters"][-1]["id"]


@pytest.mark.parametrize(
    "params", [{"count": 0}, {"count": 1001}, {"before": "x)"}, {"before": "12"}], ids=repr
)
async def test_listing_rejects_bad_parameters(client: Client, params: dict[str, Any]) -> None:
    response = await client.get("/api/ingest/dead-letters", params=params)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("before", ["0-0", "00-000"])
async def test_nothing_is_older_than_the_first_id(
    client: Client, redis: Redis, before: str
) -> None:
    # Redis refuses "(0-0" as the end of a range: this was a 500.
    await dead_letter(redis, fields())

    response = await client.get("/api/ingest/dead-letters", params={"before": before})

    assert (response.status_code, response.json()) == (200, {"deadLetters": [], "next": None})


TOO_LONG_ID = "99999999999999999999-0"  # more than 64 bits: Redis refuses to parse it


async def test_ids_past_64_bits_are_422_not_500(client: Client, redis: Redis) -> None:
    await dead_letter(redis, fields())

    listed = await client.get("/api/ingest/dead-letters", params={"before": TOO_LONG_ID})
    deleted = await client.delete(f"/api/ingest/dead-letters/{TOO_LONG_ID}")
    replayed = await client.post(REPLAY, json={"ids": [TOO_LONG_ID]})
    largest = await client.delete("/api/ingest/dead-letters/9999999999999999999-0")

    assert (listed.status_code, deleted.status_code, replayed.status_code) == (422, 422, 422)
    assert largest.status_code == 404
    assert await redis.xlen(DL) == 1


async def test_options_names_every_method_of_the_dead_letters_path(client: Client) -> None:
    # Litestar answered `Allow: GET, OPTIONS` here, leaving out DELETE (the purge).
    response = await client.options("/api/ingest/dead-letters")

    assert response.status_code == 204
    assert response.headers["allow"] == "DELETE, GET, OPTIONS"


async def test_an_empty_dead_letter_stream_lists_nothing(client: Client) -> None:
    body = (await client.get("/api/ingest/dead-letters")).json()
    assert body == {"deadLetters": [], "next": None}


# --- replay -------------------------------------------------------------------------------


async def test_replay_moves_valid_payloads_back_and_keeps_invalid_ones(
    client: Client, redis: Redis
) -> None:
    valid = await dead_letter(redis, fields("1.5"))
    invalid = await dead_letter(redis, fields("NaN"), reason="old reason")

    body = await replay(client, {"ids": [valid, invalid, "1-0"]})

    assert body["replayed"] == 1
    assert body["missing"] == ["1-0"]
    [still] = body["still_invalid"]
    assert still["id"] == invalid
    assert "old reason" not in still["reason"]  # the current reason
    assert await stream_values(redis) == [
        {k.decode(): v.decode() for k, v in fields("1.5").items()}
    ]
    assert await letter_ids(redis) == [invalid]


async def test_a_replayed_event_is_stored_by_the_worker(client: Client, redis: Redis) -> None:
    letter = await dead_letter(redis, fields("42", metric="replayed"))

    await replay(client, {"ids": [letter]})
    processed = await client.post(
        "/api/ingest/workers/process", json={"consumer": "w1", "count": 10}
    )

    assert processed.json()["processed"] == 1
    sample = await call(redis, "TS.GET", KEYS.source_raw("replayed", "sensor-a"))
    assert (int(sample[0]), float(sample[1])) == (BASE_MS, 42.0)


@pytest.mark.parametrize("occurred_at", [None, b""], ids=["missing", "empty"])
async def test_a_payload_without_occurred_at_keeps_its_original_time(
    client: Client, redis: Redis, occurred_at: bytes | None
) -> None:
    # Empty: a batch's event left unstamped by an append function of an older release.
    payload = fields("3")
    if occurred_at is None:
        del payload[k.FIELD_OCCURRED_AT]
    else:
        payload[k.FIELD_OCCURRED_AT] = occurred_at
    letter = await dead_letter(redis, payload, message_id=f"{BASE_MS}-7".encode())

    assert (await replay(client, {"ids": [letter]}))["replayed"] == 1

    [replayed] = await stream_values(redis)
    assert replayed["occurredAt"] == format_ms(BASE_MS)


async def test_replay_all_takes_the_oldest_first_up_to_max(client: Client, redis: Redis) -> None:
    ids = [await dead_letter(redis, fields(str(i))) for i in range(5)]

    body = await replay(client, {"all": True, "max": 3})

    assert body == {"replayed": 3, "still_invalid": [], "missing": []}
    assert await letter_ids(redis) == ids[3:]
    assert [v["value"] for v in await stream_values(redis)] == ["0", "1", "2"]


async def test_payloads_that_are_not_objects_of_strings_stay(client: Client, redis: Redis) -> None:
    odd = [
        await xadd(redis, {"payload": text})
        for text in ("not json", '["a"]', json.dumps({"value": 1}))
    ]
    empty = await dead_letter(redis, None)

    body = await replay(client, {"all": True})

    assert body["replayed"] == 0
    assert sorted(s["id"] for s in body["still_invalid"]) == sorted([*odd, empty])
    assert await redis.xlen(DL) == 4


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"ids": ["1-0"], "all": True},
        {"all": True, "max": 0},
        {"all": True, "max": 10_001},
        {"ids": ["x)"]},
        {"ids": ["1-0"] * 10_001},
        {"ids": "1-0"},
        {"ids": None, "all": False},
        {"all": True, "max": 2.5},
    ],
    ids=lambda b: repr(b)[:40],
)
async def test_replay_rejects_bad_bodies_with_422(
    client: Client, redis: Redis, body: dict[str, Any]
) -> None:
    await dead_letter(redis, fields())

    response = await client.post(REPLAY, json=body)

    assert response.status_code == 422, response.text
    assert await redis.xlen(DL) == 1


async def test_replay_takes_an_integral_max_written_as_a_float(
    client: Client, redis: Redis
) -> None:
    # JSON Schema calls 2.0 an integer, as the document says max is.
    for _ in range(3):
        await dead_letter(redis, fields())

    response = await client.post(REPLAY, json={"all": True, "max": 2.0})

    assert response.status_code == 200, response.text
    assert response.json()["replayed"] == 2


async def test_replay_rejects_malformed_json_and_other_content_types(client: Client) -> None:
    malformed = await client.post(
        REPLAY, content=b"{", headers={"Content-Type": "application/json"}
    )
    text = await client.post(REPLAY, content=b"{}", headers={"Content-Type": "text/plain"})
    assert (malformed.status_code, text.status_code) == (400, 415)


async def test_the_function_called_twice_with_the_same_ids_moves_each_entry_once(
    redis: Redis,
) -> None:
    letters = [(await dead_letter(redis, fields(str(i))), str(i)) for i in range(3)]
    replayable = [(lid, {"source": "s", "metric": "cpu", "value": v}) for lid, v in letters]

    first = await replay_dead_letters(redis, KEYS, replayable)
    second = await replay_dead_letters(redis, KEYS, replayable)

    assert sorted(first.moved) == sorted(lid for lid, _ in letters)
    assert (second.moved, sorted(second.missing)) == ({}, sorted(lid for lid, _ in letters))
    assert await redis.xlen(KEYS.stream) == 3
    assert await redis.xlen(DL) == 0


async def test_concurrent_replays_of_the_same_ids_neither_lose_nor_duplicate(
    client: Client, redis: Redis
) -> None:
    ids = [await dead_letter(redis, fields(str(i))) for i in range(200)]

    results = await asyncio.gather(*(replay(client, {"ids": ids}) for _ in range(4)))

    assert sum(r["replayed"] for r in results) == 200
    assert sorted(v["value"] for v in await stream_values(redis)) == sorted(
        str(i) for i in range(200)
    )
    assert await redis.xlen(DL) == 0


async def test_a_connection_dropped_mid_replay_leaves_each_entry_in_exactly_one_stream(
    redis: Redis, redis_url: str
) -> None:
    count = 5_000
    pipe = redis.pipeline(transaction=False)
    for i in range(count):
        pipe.xadd(DL, dead_letter_fields(b"1-0", "r", fields(str(i)), "w1", now_ms()))
    letter_ids = [entry_id.decode() for entry_id in await pipe.execute()]
    replayable = [
        (lid, {"source": "s", "metric": "cpu", "value": str(i)}) for i, lid in enumerate(letter_ids)
    ]
    # The reply cannot arrive within 1 ms: the client gives up and drops the connection.
    impatient = Redis.from_url(redis_url, socket_timeout=0.001)
    try:
        await replay_dead_letters(redis, KEYS, [])  # loads the library first
        with pytest.raises(RedisTimeoutError):
            await replay_dead_letters(impatient, KEYS, replayable)
    finally:
        await impatient.aclose()

    async def placement() -> tuple[list[str], set[str]]:
        """Values in the stream and in the dead letters, read in one atomic step: the dropped
        call may still be running (Redis finishes a command whose client left)."""
        snapshot = redis.pipeline(transaction=True)
        snapshot.xrange(KEYS.stream)
        snapshot.xrange(DL)
        stream, left = await snapshot.execute()
        in_stream = [f[b"value"].decode() for _, f in stream]
        ids = {lid for lid, _ in left}
        return in_stream, {str(i) for i, lid in enumerate(letter_ids) if lid.encode() in ids}

    in_stream, in_dead_letters = await placement()
    assert len(in_stream) == len(set(in_stream))  # no entry twice
    assert in_dead_letters.isdisjoint(in_stream)
    assert set(in_stream) | in_dead_letters == {str(i) for i in range(count)}

    retry = await replay_dead_letters(redis, KEYS, replayable)  # the caller retries

    in_stream, in_dead_letters = await placement()
    assert (sorted(in_stream), in_dead_letters) == (sorted(str(i) for i in range(count)), set())
    assert len(retry.moved) + len(retry.missing) == count


# --- delete and purge ------------------------------------------------------------------------


async def test_delete_one_dead_letter_then_404(client: Client, redis: Redis) -> None:
    letter = await dead_letter(redis, fields())

    first = await client.delete(f"/api/ingest/dead-letters/{letter}")
    again = await client.delete(f"/api/ingest/dead-letters/{letter}")
    bad = await client.delete("/api/ingest/dead-letters/not-an-id")

    assert (first.status_code, first.json()) == (200, {"deleted": 1})
    assert again.status_code == 404
    assert again.json()["status_code"] == 404
    assert bad.status_code == 422
    assert await redis.xlen(DL) == 0


async def test_purge_deletes_dead_letters_older_than_the_age(client: Client, redis: Redis) -> None:
    now = now_ms()
    old = [await dead_letter(redis, fields(), letter_id=f"{now - 600_000 + i}-0") for i in range(3)]
    recent = await dead_letter(redis, fields())

    response = await client.delete("/api/ingest/dead-letters", params={"olderThanMs": 300_000})

    assert (response.status_code, response.json()) == (200, {"deleted": 3})
    assert await letter_ids(redis) == [recent]
    assert old


@pytest.mark.parametrize("params", [{}, {"olderThanMs": -1}, {"olderThanMs": "soon"}], ids=repr)
async def test_purge_needs_a_non_negative_age(client: Client, params: dict[str, Any]) -> None:
    response = await client.delete("/api/ingest/dead-letters", params=params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert "olderThanMs" in body["detail"]
    assert [e["field"] for e in body["errors"]] in ([], ["olderThanMs"])
