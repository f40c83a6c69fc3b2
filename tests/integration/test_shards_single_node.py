"""The producer on one Redis with INGEST_STREAM_SHARDS=4: events spread over four streams by
source (one append call for all four), guarded requests whole on their client's shard, and every
read, dead-letter and process route over all four."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from ingest_producer.appender import EventAppender
from ingest_producer.asgi import build_app
from ingest_producer.auth import client_id
from ingest_producer.openapi import ecma_pattern
from ingest_producer.reading import params
from ingest_shared import keys as k
from ingest_shared.exceptions import ConfigurationError
from ingest_shared.functions import Appended
from ingest_shared.redis_client import call
from ingest_shared.schema import EventOut, format_ms, now_ms
from ingest_shared.settings import Settings
from ingest_shared.streams import dead_letter_fields

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from httpx import AsyncClient as Client
    from redis.asyncio import Redis
    from tests.conftest import AppClient

    from ingest_shared.keys import Shard

URL = "/api/ingest/events"
PROCESS = "/api/ingest/workers/process"
DEAD_LETTERS = "/api/ingest/dead-letters"
SHARDS = 4
KEY_A = "write-key-a-0123456789"
KEY_B = "write-key-b-0123456789"
# The cardinality registry off: these tests count the append calls and the guards' keys.
SETTINGS = Settings(stream_shards=SHARDS, max_series=0, max_metrics=0)
KEYS = SETTINGS.keys
GROUP = SETTINGS.consumer_group
SOURCES = [f"dev-{n}" for n in range(40)]
WAIT_S = 5.0


def auth(api_key: str, idempotency_key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {api_key}"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return headers


def events(count: int, metric: str = "cpu") -> list[dict[str, Any]]:
    """``count`` events, one source each (cycling), a distinct value each, recent times."""
    base = now_ms() - 60_000
    return [
        {
            "source": SOURCES[n % len(SOURCES)],
            "metric": metric,
            "value": float(n),
            "occurredAt": format_ms(base + n),
        }
        for n in range(count)
    ]


async def entries(redis: Redis, shard: Shard) -> dict[bytes, dict[bytes, bytes]]:
    reply = await call(redis, "XRANGE", shard.stream, "-", "+")
    return dict(reply)


async def lengths(redis: Redis) -> list[int]:
    return [int(await redis.xlen(shard.stream)) for shard in KEYS.shards]


@pytest.fixture
async def client(redis: Redis, redis_url: str, serve: AppClient) -> AsyncIterator[Client]:
    async with serve(build_app(dataclasses.replace(SETTINGS, redis_url=redis_url))) as http:
        yield http


@pytest.fixture
async def guarded(redis: Redis, redis_url: str, serve: AppClient) -> AsyncIterator[Client]:
    """API keys, and a budget of 5 events per minute per key."""
    settings = dataclasses.replace(
        SETTINGS,
        redis_url=redis_url,
        write_keys=frozenset({KEY_A, KEY_B}),
        rate_limit=5,
        rate_window_ms=60_000,
    )
    async with serve(build_app(settings)) as http:
        yield http


def test_the_four_shards_have_their_own_tagged_keys() -> None:
    streams = [shard.stream for shard in KEYS.shards]

    assert len(set(streams)) == SHARDS
    assert all(s.startswith(f"{SETTINGS.stream_key}:{{") for s in streams)
    assert {KEYS.shard_of_source(source).index for source in SOURCES} == set(range(SHARDS))


async def test_a_batch_of_many_sources_is_spread_by_source_with_ids_in_input_order(
    client: Client, redis: Redis
) -> None:
    batch = events(40)
    await redis.config_resetstat()

    response = await client.post(URL, json=batch)

    assert response.status_code == 200, response.text
    ids = [entry_id.encode() for entry_id in response.json()["ids"]]
    assert len(ids) == len(batch)
    stats = await redis.info("commandstats")
    assert stats["cmdstat_fcall"]["calls"] == 1  # one call for every shard, not per shard
    stored = {shard.index: await entries(redis, shard) for shard in KEYS.shards}
    for event, entry_id in zip(batch, ids, strict=True):
        fields = stored[KEYS.shard_of_source(event["source"]).index][entry_id]
        assert fields[k.FIELD_SOURCE].decode() == event["source"]
        assert float(fields[k.FIELD_VALUE]) == event["value"]
    assert sum(map(len, stored.values())) == len(batch)
    assert all(stored.values())  # every shard got some


async def test_one_source_stays_in_order_on_one_shard(client: Client, redis: Redis) -> None:
    batch = [{"source": "dev-7", "metric": "cpu", "value": float(n)} for n in range(10)]

    response = await client.post(URL, json=batch)

    shard = KEYS.shard_of_source("dev-7")
    stored = await entries(redis, shard)
    assert [float(f[k.FIELD_VALUE]) for f in stored.values()] == [float(n) for n in range(10)]
    assert [i.encode() for i in response.json()["ids"]] == list(stored)
    assert sum(await lengths(redis)) == 10


async def test_concurrent_requests_share_one_call_for_every_shard(redis: Redis) -> None:
    appender = EventAppender(redis, SETTINGS)
    await appender.load()
    single = [EventOut(s, "cpu", 1.0, "2026-03-19T12:00:00Z") for s in SOURCES]
    await redis.config_resetstat()

    results = await asyncio.gather(*(appender.append([event]) for event in single))

    stats = await redis.info("commandstats")
    assert stats["cmdstat_fcall"]["calls"] == 1
    assert all(isinstance(result, Appended) for result in results)
    assert sum(await lengths(redis)) == len(single)


async def test_a_guarded_batch_lands_whole_on_its_clients_shard(
    guarded: Client, redis: Redis
) -> None:
    batch = events(5)  # five sources, several shards if unguarded

    response = await guarded.post(URL, json=batch, headers=auth(KEY_A, "batch-1"))

    assert response.status_code == 200, response.text
    shard = KEYS.shard_of_client(client_id(KEY_A))
    stored = await entries(redis, shard)
    assert [i.encode() for i in response.json()["ids"]] == list(stored)
    assert [float(f[k.FIELD_VALUE]) for f in stored.values()] == [e["value"] for e in batch]
    assert sum(await lengths(redis)) == len(batch)
    # Its idempotency record and rate counter live on that shard too.
    guards = {key.decode() async for key in redis.scan_iter(match="telemetry:*:{*}:*")}
    assert shard.rate_limit(client_id(KEY_A)) in guards
    [record] = [key for key in guards if key.startswith(f"{KEYS.prefix}idempotency:")]
    assert record.startswith(f"{KEYS.prefix}idempotency:{{{shard.tag}}}:")
    assert len(guards) == 2


async def test_idempotency_repeats_are_found_whatever_the_sources(
    guarded: Client, redis: Redis
) -> None:
    first_batch = events(3)
    first = await guarded.post(URL, json=first_batch, headers=auth(KEY_A, "again"))
    again = await guarded.post(URL, json=first_batch, headers=auth(KEY_A, "again"))
    single = {"source": "dev-30", "metric": "cpu", "value": 1.0}
    other = await guarded.post(URL, json=single, headers=auth(KEY_B, "again"))
    other_again = await guarded.post(URL, json=single, headers=auth(KEY_B, "again"))

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert other_again.content == other.content
    assert other_again.headers["idempotent-replayed"] == "true"
    assert sum(await lengths(redis)) == 4


async def test_the_rate_limit_is_one_budget_per_key_across_shards(
    guarded: Client, redis: Redis
) -> None:
    # Five single events from five sources: unguarded they would go to several shards.
    spread = [{"source": s, "metric": "cpu", "value": 1.0} for s in SOURCES[:6]]
    assert len({KEYS.shard_of_source(s).index for s in SOURCES[:6]}) > 1

    answers = [(await guarded.post(URL, json=e, headers=auth(KEY_A))).status_code for e in spread]
    key_b = await guarded.post(URL, json=spread[0], headers=auth(KEY_B))

    assert answers == [200] * 5 + [429]
    assert key_b.status_code == 200  # its own budget
    assert sum(await lengths(redis)) == 6


async def test_a_batch_whose_one_shard_is_broken_fails_whole_with_nothing_enqueued(
    client: Client, redis: Redis
) -> None:
    batch = events(40)
    broken = KEYS.shard_of_source(batch[0]["source"])
    await redis.delete(broken.stream)
    await redis.set(broken.stream, "not a stream")  # that shard's stream cannot take appends

    response = await client.post(URL, json=batch)

    # One call carries every shard's part: it is refused before any write.
    assert response.status_code == 500, response.text
    others = [s for s in KEYS.shards if s != broken]
    assert [int(await redis.xlen(s.stream)) for s in others] == [0] * len(others)


async def test_summary_and_backlog_are_summed_over_the_shards(client: Client, redis: Redis) -> None:
    await client.post(URL, json=events(40))
    assert min(await lengths(redis)) >= 2
    # "w1" holds entries on two shards, "w2" on one: merged by name in the summary.
    for shard, consumer in zip(KEYS.shards[:3], ("w1", "w1", "w2"), strict=True):
        await call(
            redis, "XREADGROUP", "GROUP", GROUP, consumer, "COUNT", 2, "STREAMS", shard.stream, ">"
        )

    summary = (await client.get("/api/ingest/summary")).json()["queue"]
    deadline = time.monotonic() + WAIT_S
    while (await client.get("/ready")).json().get("backlog") != 40:
        assert time.monotonic() < deadline, "the backlog monitor never summed the shards"
        await asyncio.sleep(0.05)

    assert summary["total"] == 40
    assert summary["added"] == 40
    assert summary["pending"] == 6
    assert summary["lag"] == 34
    assert summary["oldestPendingAgeMs"] is not None
    consumers = {c["name"]: c["pending"] for c in summary["consumers"]}
    assert consumers == {"w1": 4, "w2": 2}
    recent = (await client.get("/api/ingest/events/recent?count=50")).json()
    order = [tuple(map(int, r["id"].split("-"))) for r in recent]
    assert len(recent) == 40
    assert order == sorted(order, reverse=True)  # newest first, all shards merged
    assert {r["value"]["value"] for r in recent} == {float(n) for n in range(40)}


async def test_the_queue_gauges_are_summed_over_the_shards(client: Client, redis: Redis) -> None:
    await client.post(URL, json=events(40))
    await call(
        redis, "XREADGROUP", "GROUP", GROUP, "w1", "COUNT", 2, "STREAMS", KEYS.shards[1].stream, ">"
    )
    await dead_letter(redis, KEYS.shards[0], "5-0")
    await dead_letter(redis, KEYS.shards[3], "5-0")

    deadline = time.monotonic() + WAIT_S
    while (samples := await scrape(client)).get("ingest_queue_pending") != 2:
        assert time.monotonic() < deadline, "the gauges never summed the shards"
        await asyncio.sleep(0.05)

    assert samples["ingest_queue_length"] == 40
    assert samples["ingest_queue_entries_added"] == 40
    assert samples["ingest_queue_lag"] == 38
    assert samples["ingest_queue_backlog"] == 40
    assert samples["ingest_dead_letter_length"] == 2
    assert samples["ingest_queue_oldest_pending_age_seconds"] >= 0


async def scrape(http: Client) -> dict[str, float]:
    response = await http.get("/metrics")
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def test_the_process_route_drains_every_shard(client: Client, redis: Redis) -> None:
    batch = events(40)
    await client.post(URL, json=batch)

    read = []
    while True:
        response = await client.post(PROCESS, json={"consumer": "w1", "count": 7})
        assert response.status_code == 200, response.text
        if response.json()["read"] == 0:
            break
        assert response.json()["read"] <= 7
        read.append(response.json()["read"])

    assert sum(read) == 40
    for shard in KEYS.shards:
        [info] = await redis.xinfo_groups(shard.stream)
        assert (info["pending"], info["lag"], info["consumers"]) == (0, 0, 0)
    for event in batch:
        key = KEYS.source_raw(event["metric"], event["source"])
        assert [float(v) for _, v in await call(redis, "TS.RANGE", key, "-", "+")] == [
            event["value"]
        ]


async def dead_letter(redis: Redis, shard: Shard, letter_id: str, value: str = "1.5") -> None:
    payload = {
        k.FIELD_SOURCE: b"dev-1",
        k.FIELD_METRIC: b"cpu",
        k.FIELD_VALUE: value.encode(),
        k.FIELD_OCCURRED_AT: format_ms(now_ms() - 1_000).encode(),
    }
    fields = dead_letter_fields(b"1700000000000-0", "rejected", payload, "w1", now_ms())
    await redis.xadd(shard.dead_letter, fields, id=letter_id)


async def test_dead_letters_are_listed_newest_first_with_ids_qualified_by_shard(
    client: Client, redis: Redis
) -> None:
    s0, s1, s2, _ = KEYS.shards
    # The same id in two shards, and others around it.
    for shard, letter_id in ((s0, "4-0"), (s0, "5-0"), (s2, "5-0"), (s1, "6-0"), (s2, "7-1")):
        await dead_letter(redis, shard, letter_id)

    whole = (await client.get(f"{DEAD_LETTERS}?count=10")).json()
    pages: list[str] = []
    before: str | None = None
    while True:
        query = f"{DEAD_LETTERS}?count=2" + (f"&before={before}" if before else "")
        page = (await client.get(query)).json()
        pages += [letter["id"] for letter in page["deadLetters"]]
        before = page["next"]
        if before is None:
            break
    plain_cursor = (await client.get(f"{DEAD_LETTERS}?before=5-0")).json()

    expected = ["7-1@2", "6-0@1", "5-0@2", "5-0@0", "4-0@0"]
    assert [letter["id"] for letter in whole["deadLetters"]] == expected
    assert whole["next"] is None
    assert pages == expected
    assert [letter["id"] for letter in plain_cursor["deadLetters"]] == ["4-0@0"]


async def test_dead_letters_are_replayed_and_deleted_on_the_shard_their_id_names(
    client: Client, redis: Redis
) -> None:
    s0, _, s2, _ = KEYS.shards
    await dead_letter(redis, s0, "5-0", value="1.0")
    await dead_letter(redis, s2, "5-0", value="2.0")
    await dead_letter(redis, s2, "6-0", value="not a number")
    await dead_letter(redis, s0, "7-0")

    replayed = await client.post(f"{DEAD_LETTERS}/replay", json={"ids": ["5-0@2", "6-0@2"]})
    missing = await client.post(f"{DEAD_LETTERS}/replay", json={"ids": ["5-0@2", "9-0@1"]})
    deleted = await client.delete(f"{DEAD_LETTERS}/7-0@0")
    gone = await client.delete(f"{DEAD_LETTERS}/7-0@0")
    plain = await client.delete(f"{DEAD_LETTERS}/5-0")
    no_such_shard = await client.delete(f"{DEAD_LETTERS}/5-0@4")

    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["replayed"] == 1
    assert [i["id"] for i in replayed.json()["still_invalid"]] == ["6-0@2"]
    assert missing.json()["missing"] == ["5-0@2", "9-0@1"]
    [(_, fields)] = (await entries(redis, s2)).items()  # back in shard 2's own stream
    assert fields[k.FIELD_VALUE] == b"2.0"
    assert await redis.xlen(s0.stream) == 0
    twin = await call(redis, "XRANGE", s0.dead_letter, "-", "+")
    assert [entry_id for entry_id, _ in twin] == [b"5-0"]  # its twin stays
    assert (deleted.status_code, gone.status_code) == (200, 404)
    assert (plain.status_code, no_such_shard.status_code) == (422, 422)
    assert "id@shard" in plain.json()["detail"]
    assert "0 to 3" in no_such_shard.json()["detail"]


async def test_replay_all_takes_the_oldest_of_every_shard_and_purge_empties_them(
    client: Client, redis: Redis
) -> None:
    old = now_ms() - 3_600_000
    for index, shard in enumerate(KEYS.shards):
        await dead_letter(redis, shard, f"{old + index}-0")

    replayed = await client.post(f"{DEAD_LETTERS}/replay", json={"all": True, "max": 2})
    purged = await client.delete(f"{DEAD_LETTERS}?olderThanMs=60000")

    assert replayed.json()["replayed"] == 2
    assert await lengths(redis) == [1, 1, 0, 0]  # shards 0 and 1 held the two oldest
    assert purged.json() == {"deleted": 2}
    assert [await redis.xlen(s.dead_letter) for s in KEYS.shards] == [0, 0, 0, 0]


async def test_the_api_document_publishes_qualified_dead_letter_ids(client: Client) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    paths = document["paths"]
    [letter] = paths["/api/ingest/dead-letters/{letter_id}"]["delete"]["parameters"]
    listing = paths["/api/ingest/dead-letters"]["get"]["parameters"]
    [before] = [p for p in listing if p["name"] == "before"]
    replay = paths["/api/ingest/dead-letters/replay"]["post"]["requestBody"]["content"]
    ids = replay["application/json"]["schema"]["properties"]["ids"]["anyOf"][0]["items"]
    qualified = ["5-0@2", "5-0@0", "9223372036854775807-0@3"]
    malformed = ["5-0@02", "5-0@", "5-0@10240", "x", "5-0@2\n", "@2"]

    published = [
        (letter["schema"]["pattern"], []),
        (ids["pattern"], []),
        (before["schema"]["pattern"], ["5-0"]),
    ]
    for pattern, also in published:
        # ECMA-262 anchors; read with Python's re (same syntax otherwise).
        assert pattern.startswith("^")
        assert pattern.endswith("$")
        python = re.compile(pattern[1:-1])
        assert all(python.fullmatch(text) for text in [*qualified, *also])
        assert not any(python.fullmatch(text) for text in malformed)
    assert re.fullmatch(ids["pattern"][1:-1], "5-0") is None
    for text in qualified:
        assert params.dead_letter_id(text, SHARDS)[0] == text.split("@")[0]
    assert params.dead_letter_cursor("5-0", SHARDS) == ("5-0", 0)
    assert ecma_pattern(params.dead_letter_pattern(SHARDS)) == letter["schema"]["pattern"]


async def test_a_producer_with_another_shard_count_than_redis_refuses_to_start(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    async with serve(build_app(dataclasses.replace(SETTINGS, redis_url=redis_url))):
        pass
    two = dataclasses.replace(SETTINGS, redis_url=redis_url, stream_shards=2)

    with structlog.testing.capture_logs() as logs, pytest.raises(ExceptionGroup) as failed:
        async with serve(build_app(two)):
            pass

    # Litestar runs the startup hooks in a task group.
    [refused] = failed.value.exceptions
    assert isinstance(refused, ConfigurationError)
    assert "INGEST_STREAM_SHARDS=2" in str(refused)
    assert "'shards': '4'" in str(refused)
    [line] = [log for log in logs if log["event"] == "producer_misconfigured"]
    assert line["log_level"] == "error"
    assert await redis.hgetall(KEYS.layout) == {b"shards": b"4", b"cluster": b"0"}
