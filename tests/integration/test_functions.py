"""The server-side functions: appends (order, idempotency and rate limit, atomically),
trimming, the consumer release, and loading the two libraries."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from typing import TYPE_CHECKING

import msgspec
import pytest
from redis.exceptions import ResponseError

from ingest_shared import keys as k
from ingest_shared.functions import PRODUCER_LIBRARY as PRODUCER
from ingest_shared.functions import WORKER_LIBRARY as WORKER
from ingest_shared.functions import (
    Appended,
    Conflict,
    Duplicate,
    Idempotency,
    OverLimit,
    RateLimit,
    RateLimited,
    Segment,
    SegmentReply,
    append_command,
    append_segments,
    load_library,
    release_consumer,
    trim_stream,
)
from ingest_shared.redis_client import call
from ingest_shared.schema import EventOut, format_ms, to_epoch_ms
from ingest_shared.settings import Settings, load_settings

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.typing import EncodableT

KEYS = load_settings({}).keys
FIELDS = (k.FIELD_SOURCE, k.FIELD_METRIC, k.FIELD_VALUE, k.FIELD_OCCURRED_AT)
EVENTS = [EventOut(f"s{i}", "cpu", i / 4, "2026-03-19T12:00:00Z") for i in range(50)]
# Three stream shards of one node: one call may append to all of them.
S0, S1, S2 = Settings(stream_shards=3).keys.shards


@pytest.fixture
async def loaded(redis: Redis) -> Redis:
    await load_library(redis, PRODUCER)
    await load_library(redis, WORKER)
    return redis


async def append_one(redis: Redis, segment: Segment) -> SegmentReply:
    [reply] = await append_segments(redis, KEYS, [segment])
    return reply


async def stream_ids(redis: Redis, stream: str = KEYS.stream) -> list[bytes]:
    return [entry_id for entry_id, _ in await entries(redis, stream)]


async def entries(redis: Redis, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    reply: list[tuple[bytes, dict[bytes, bytes]]] = await call(redis, "XRANGE", stream, "-", "+")
    return reply


async def test_batch_is_appended_in_order_with_the_tutorial_fields(loaded: Redis) -> None:
    reply = await append_one(loaded, Segment(EVENTS))
    assert isinstance(reply, Appended)
    entries = await loaded.xrange(KEYS.stream)
    assert entries is not None
    assert [entry_id for entry_id, _ in entries] == reply.ids
    assert entries[7][1] == {
        b"source": b"s7",
        b"metric": b"cpu",
        b"value": b"1.75",
        b"occurredAt": b"2026-03-19T12:00:00Z",
    }


async def test_loading_twice_is_harmless(loaded: Redis) -> None:
    await load_library(loaded, PRODUCER)
    assert isinstance(await append_one(loaded, Segment(EVENTS[:1])), Appended)


async def test_each_library_holds_only_its_own_functions(redis: Redis) -> None:
    await call(redis, "FUNCTION", "FLUSH")  # FLUSHALL keeps functions
    await load_library(redis, PRODUCER)
    await load_library(redis, WORKER)
    listed = {
        lib[b"library_name"]: {f[b"name"] for f in lib[b"functions"]}
        for lib in await call(redis, "FUNCTION", "LIST")
    }
    assert listed == {
        b"ingest_producer": {
            b"ingest_admit",
            b"ingest_append",
            b"ingest_replay",
            b"ingest_release_consumer",
            b"ingest_recent",
        },
        b"ingest_worker": {
            b"ingest_trim",
            b"ingest_read",
            b"ingest_claim",
            b"ingest_lease",
            b"ingest_forget_consumers",
        },
    }


async def test_the_single_library_of_earlier_releases_is_replaced(redis: Redis) -> None:
    legacy = (
        "#!lua name=telemetry_ingest\n"
        "redis.register_function('ingest_append', function() return 1 end)\n"
        "redis.register_function('ingest_trim', function() return 1 end)\n"
    )
    await call(redis, "FUNCTION", "FLUSH")
    await call(redis, "FUNCTION", "LOAD", legacy)
    await load_library(redis, PRODUCER)
    await load_library(redis, WORKER)
    names = {lib[b"library_name"] for lib in await call(redis, "FUNCTION", "LIST")}
    assert names == {b"ingest_producer", b"ingest_worker"}
    assert isinstance(await append_one(redis, Segment(EVENTS[:1])), Appended)


async def test_a_clash_with_a_foreign_library_is_reported_not_deleted(redis: Redis) -> None:
    foreign = "#!lua name=theirs\nredis.register_function('ingest_trim', function() return 1 end)"
    await call(redis, "FUNCTION", "FLUSH")
    await call(redis, "FUNCTION", "LOAD", foreign)
    with pytest.raises(ResponseError, match="already exists"):
        await load_library(redis, WORKER)
    assert {lib[b"library_name"] for lib in await call(redis, "FUNCTION", "LIST")} == {b"theirs"}
    await call(redis, "FUNCTION", "FLUSH")


async def test_a_consumer_is_released_only_when_it_holds_nothing_pending(loaded: Redis) -> None:
    await append_one(loaded, Segment(EVENTS[:2]))
    await loaded.xgroup_create(KEYS.stream, "g", id="0")
    await loaded.xreadgroup("g", "busy", {KEYS.stream: ">"}, count=1)
    await loaded.xreadgroup("g", "done", {KEYS.stream: ">"}, count=1)
    [(done_id, _)] = (await loaded.xrange(KEYS.stream) or [])[1:]
    assert isinstance(done_id, bytes)
    await loaded.xack(KEYS.stream, "g", done_id)

    assert await release_consumer(loaded, KEYS, "g", "done")
    assert not await release_consumer(loaded, KEYS, "g", "busy")
    assert not await release_consumer(loaded, KEYS, "g", "never-seen")
    consumers = await loaded.xinfo_consumers(KEYS.stream, "g")
    assert [(c["name"], c["pending"]) for c in consumers] == [(b"busy", 1)]


async def test_one_call_answers_each_segment_on_its_own(loaded: Redis) -> None:
    stored = Idempotency(KEYS.idempotency("stored"), 60_000, "hash-a", b"echo-a")
    first = await append_one(loaded, Segment(EVENTS[:2], stored))
    assert isinstance(first, Appended)
    spent = RateLimit(KEYS.rate_limit("busy"), limit=1, window_ms=60_000)
    assert isinstance(await append_one(loaded, Segment(EVENTS[:1], rate_limit=spent)), Appended)
    await loaded.config_resetstat()

    replies = await append_segments(
        loaded,
        KEYS,
        [
            Segment(EVENTS[10:13]),
            Segment(EVENTS[20:21], stored),  # a repeat
            Segment(EVENTS[30:31], Idempotency(stored.key, 60_000, "hash-b")),  # other body
            Segment(EVENTS[40:41], rate_limit=spent),  # over its limit
            Segment(EVENTS[45:46], rate_limit=RateLimit(KEYS.rate_limit("idle"), 1, 60_000)),
        ],
    )

    stats = await loaded.info("commandstats")
    assert stats["cmdstat_fcall"]["calls"] == 1
    ok, dup, conflict, limited, other_client = replies
    assert isinstance(ok, Appended)
    assert len(ok.ids) == 3
    assert dup == Duplicate(first.ids, b"echo-a")
    assert conflict == Conflict()
    assert isinstance(limited, RateLimited)
    assert isinstance(other_client, Appended)
    # Before the call: 2 + 1 entries; the call appended only the two accepted segments.
    assert (await stream_ids(loaded))[3:] == [*ok.ids, *other_client.ids]


def segment_at(command: list[EncodableT], position: int) -> int:
    """Where the array of the segment at ``position`` (from 0) is in an append command:
    FCALL name numkeys | keys... | F names... | streams | 2 per segment (array, echo)."""
    numkeys = command[2]
    assert isinstance(numkeys, int)
    return 3 + numkeys + 1 + len(FIELDS) + 1 + 2 * position


def patched(command: list[EncodableT], position: int, field: int, value: int) -> None:
    """Set one number of a segment's array (0: its event count, 5: its first event's stream)."""
    at = segment_at(command, position)
    array = command[at]
    assert isinstance(array, bytes)
    segment = msgspec.msgpack.decode(array)
    segment[field] = value
    command[at] = msgspec.msgpack.encode(segment)


async def test_a_payload_that_does_not_match_its_count_fails_the_whole_call(
    loaded: Redis,
) -> None:
    guard = Idempotency(S1.idempotency("k"), 60_000, "h")
    limit = RateLimit(S1.rate_limit("c"), limit=10, window_ms=60_000)
    segments = [
        Segment(EVENTS[:2], stream=S0.stream),
        Segment(EVENTS[2:4], guard, limit, S1.stream),
        Segment(EVENTS[4:6], stream=S2.stream),
    ]
    command = append_command(KEYS, segments)
    patched(command, 2, 0, 3)

    with pytest.raises(ResponseError, match="segment 3 does not hold 3 events"):
        await call(loaded, *command)

    # Nothing at all: not the segments before it, on other streams, nor their guards.
    assert [await loaded.exists(s.stream) for s in (S0, S1, S2)] == [0, 0, 0]
    assert await loaded.exists(guard.key, limit.key) == 0


async def test_one_call_appends_each_event_to_the_stream_it_names(loaded: Redis) -> None:
    unstamped = [EventOut(e.source, e.metric, e.value, "") for e in EVENTS]
    spread = [S2.stream, S0.stream, S2.stream, S1.stream]
    await loaded.config_resetstat()

    replies = await append_segments(
        loaded,
        S0,
        [
            Segment(unstamped[0:3], stream=S1.stream),
            Segment(unstamped[3:5]),  # the call's own stream: S0
            Segment(unstamped[5:9], streams=spread),  # one stream per event
            Segment(unstamped[9:10], stream=S1.stream),
        ],
    )

    stats = await loaded.info("commandstats")
    assert stats["cmdstat_fcall"]["calls"] == 1
    to_s1, to_s0, spread_ids, to_s1_again = [r.ids for r in replies if isinstance(r, Appended)]
    assert await loaded.xlen(KEYS.stream) == 0  # nothing where no event pointed
    stored = {shard.stream: await entries(loaded, shard.stream) for shard in (S0, S1, S2)}
    assert [i for i, _ in stored[S0.stream]] == [*to_s0, spread_ids[1]]
    assert [i for i, _ in stored[S1.stream]] == [*to_s1, spread_ids[3], *to_s1_again]
    assert [i for i, _ in stored[S2.stream]] == [spread_ids[0], spread_ids[2]]
    values = {s: [float(f[b"value"]) for _, f in entries] for s, entries in stored.items()}
    assert values == {
        S0.stream: [e.value for e in (*EVENTS[3:5], EVENTS[6])],
        S1.stream: [e.value for e in (*EVENTS[0:3], EVENTS[8], EVENTS[9])],
        S2.stream: [EVENTS[5].value, EVENTS[7].value],
    }
    # One clock for the whole call, whatever the stream.
    stamps = {f[b"occurredAt"] for entries in stored.values() for _, f in entries}
    assert len(stamps) == 1
    assert stamps.pop().endswith(b"Z")


def test_a_segment_needs_one_stream_per_event_when_it_names_several() -> None:
    with pytest.raises(ValueError, match="1 streams for 2 events"):
        append_command(S0, [Segment(EVENTS[:2], streams=[S1.stream])])


async def test_guards_in_a_call_over_several_streams_answer_each_segment(loaded: Redis) -> None:
    stored = Idempotency(S1.idempotency("stored"), 60_000, "hash-a", b"echo-a")
    [first] = await append_segments(loaded, S1, [Segment(EVENTS[:2], stored, stream=S1.stream)])
    assert isinstance(first, Appended)
    spent = RateLimit(S2.rate_limit("busy"), limit=2, window_ms=60_000)
    [used] = await append_segments(loaded, S2, [Segment(EVENTS[:1], rate_limit=spent)])
    assert isinstance(used, Appended)

    replies = await append_segments(
        loaded,
        S0,
        [
            Segment(EVENTS[10:13], stream=S0.stream),
            Segment(EVENTS[20:21], stored, stream=S1.stream),  # a repeat
            Segment(EVENTS[40:42], rate_limit=spent, stream=S2.stream),  # over its limit
            Segment(EVENTS[30:31], Idempotency(stored.key, 60_000, "b"), stream=S1.stream),
            Segment(EVENTS[45:47], stream=S2.stream),
        ],
    )

    plain, dup, limited, conflict, after = replies
    assert isinstance(plain, Appended)
    assert dup == Duplicate(first.ids, b"echo-a")
    assert isinstance(limited, RateLimited)
    assert conflict == Conflict()
    assert isinstance(after, Appended)
    assert await stream_ids(loaded, S0.stream) == plain.ids
    assert await stream_ids(loaded, S1.stream) == first.ids  # nothing more
    assert await stream_ids(loaded, S2.stream) == [*used.ids, *after.ids]


async def test_a_stream_key_of_another_type_fails_the_call_before_any_write(
    loaded: Redis,
) -> None:
    await loaded.set(S2.stream, "not a stream")
    limit = RateLimit(S0.rate_limit("c"), limit=10, window_ms=60_000)
    segments = [Segment(EVENTS[:2], rate_limit=limit, stream=S0.stream), Segment(EVENTS[2:4])]

    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await append_segments(loaded, S2, segments)

    assert await loaded.exists(S0.stream, limit.key) == 0


async def test_a_segment_naming_a_stream_outside_the_call_is_refused(loaded: Redis) -> None:
    command = append_command(S0, [Segment(EVENTS[:1]), Segment(EVENTS[1:2], stream=S1.stream)])
    patched(command, 1, 5, 3)

    with pytest.raises(ResponseError, match="segment 2 event 1 names stream 3 of 2"):
        await call(loaded, *command)

    assert await loaded.exists(S0.stream, S1.stream) == 0


async def test_repeat_with_the_same_idempotency_key_enqueues_nothing(loaded: Redis) -> None:
    guard = Idempotency(KEYS.idempotency("k1"), 60_000, "hash-a", b'{"count":2}')
    first = await append_one(loaded, Segment(EVENTS[:2], guard))
    again = await append_one(loaded, Segment(EVENTS[:2], guard))
    assert isinstance(first, Appended)
    assert again == Duplicate(ids=first.ids, echo=b'{"count":2}')
    assert await loaded.xlen(KEYS.stream) == 2
    assert 0 < await loaded.pttl(KEYS.idempotency("k1")) <= 60_000


async def test_a_repeat_keeps_the_original_expiry(loaded: Redis) -> None:
    guard = Idempotency(KEYS.idempotency("k3"), 60_000, "h")
    await append_one(loaded, Segment(EVENTS[:1], guard))
    expires_at = await call(loaded, "PEXPIRETIME", guard.key)

    assert isinstance(await append_one(loaded, Segment(EVENTS[:1], guard)), Duplicate)

    assert await call(loaded, "PEXPIRETIME", guard.key) == expires_at


async def test_the_same_key_with_another_body_is_a_conflict(loaded: Redis) -> None:
    key = KEYS.idempotency("k4")
    await append_one(loaded, Segment(EVENTS[:1], Idempotency(key, 60_000, "hash-a")))
    reply = await append_one(loaded, Segment(EVENTS[1:2], Idempotency(key, 60_000, "hash-b")))
    assert reply == Conflict()
    assert await loaded.xlen(KEYS.stream) == 1


async def test_concurrent_repeats_enqueue_once(loaded: Redis) -> None:
    guard = Idempotency(KEYS.idempotency("k2"), 60_000, "h", b"{}")
    replies = await asyncio.gather(
        *(append_one(loaded, Segment(EVENTS[:3], guard)) for _ in range(20))
    )
    assert sum(isinstance(reply, Appended) for reply in replies) == 1
    assert sum(isinstance(reply, Duplicate) for reply in replies) == 19
    assert await loaded.xlen(KEYS.stream) == 3


async def test_repeats_within_one_call_enqueue_once(loaded: Redis) -> None:
    guard = Idempotency(KEYS.idempotency("k5"), 60_000, "h")
    replies = await append_segments(loaded, KEYS, [Segment(EVENTS[:3], guard)] * 5)
    assert [type(reply) for reply in replies] == [Appended] + [Duplicate] * 4
    assert await loaded.xlen(KEYS.stream) == 3


async def test_rate_limit_refuses_past_the_limit_and_enqueues_nothing(loaded: Redis) -> None:
    limit = RateLimit(KEYS.rate_limit("client-1"), limit=5, window_ms=60_000)
    replies = [await append_one(loaded, Segment(EVENTS[:2], rate_limit=limit)) for _ in range(4)]
    assert [type(reply) for reply in replies] == [Appended, Appended, RateLimited, RateLimited]
    refused = replies[2]
    assert isinstance(refused, RateLimited)
    assert 0 < refused.retry_after_ms <= 60_000
    assert await loaded.xlen(KEYS.stream) == 4


async def test_rate_limit_counts_segments_of_one_call_in_order(loaded: Redis) -> None:
    limit = RateLimit(KEYS.rate_limit("client-2"), limit=3, window_ms=60_000)
    replies = await append_segments(loaded, KEYS, [Segment(EVENTS[:1], rate_limit=limit)] * 5)
    assert [type(reply) for reply in replies] == [Appended] * 3 + [RateLimited] * 2
    assert await loaded.xlen(KEYS.stream) == 3


async def test_rate_limit_is_per_client(loaded: Redis) -> None:
    for client in ("a", "b"):
        limit = RateLimit(KEYS.rate_limit(client), limit=1, window_ms=60_000)
        reply = await append_one(loaded, Segment(EVENTS[:1], rate_limit=limit))
        assert isinstance(reply, Appended)


async def test_a_repeat_is_not_counted_against_the_rate_limit(loaded: Redis) -> None:
    limit = RateLimit(KEYS.rate_limit("c"), limit=1, window_ms=60_000)
    guard = Idempotency(KEYS.idempotency("k6"), 60_000, "h")
    first = await append_one(loaded, Segment(EVENTS[:1], guard, limit))
    again = await append_one(loaded, Segment(EVENTS[:1], guard, limit))
    assert isinstance(first, Appended)
    assert again == Duplicate(first.ids, b"")


async def test_a_batch_larger_than_the_whole_limit_never_passes(loaded: Redis) -> None:
    limit = RateLimit(KEYS.rate_limit("big"), limit=10, window_ms=60_000)
    assert await append_one(loaded, Segment(EVENTS, rate_limit=limit)) == OverLimit(10)
    assert await loaded.xlen(KEYS.stream) == 0
    # ... and costs nothing of the window's budget.
    reply = await append_one(loaded, Segment(EVENTS[:10], rate_limit=limit))
    assert isinstance(reply, Appended)


async def test_a_batch_that_does_not_fit_what_is_left_is_refused_whole(loaded: Redis) -> None:
    limit = RateLimit(KEYS.rate_limit("rest"), limit=10, window_ms=60_000)
    assert isinstance(await append_one(loaded, Segment(EVENTS[:7], rate_limit=limit)), Appended)
    assert isinstance(await append_one(loaded, Segment(EVENTS[:4], rate_limit=limit)), RateLimited)
    assert isinstance(await append_one(loaded, Segment(EVENTS[:3], rate_limit=limit)), Appended)
    assert await loaded.xlen(KEYS.stream) == 10


async def _read(redis: Redis, consumer: str, count: int) -> list[bytes]:
    reply = await call(
        redis, "XREADGROUP", "GROUP", "g", consumer, "COUNT", count, "STREAMS", KEYS.stream, ">"
    )
    return [entry_id for entry_id, _ in reply[0][1]] if reply else []


async def test_trim_never_removes_pending_or_undelivered_entries(loaded: Redis) -> None:
    reply = await append_one(loaded, Segment(EVENTS))  # 50 entries
    assert isinstance(reply, Appended)
    await loaded.xgroup_create(KEYS.stream, "g", id="0")
    await loaded.xgroup_create(KEYS.stream, "slow", id="0")
    read = await _read(loaded, "c1", 30)  # group g: 30 delivered, 20 undelivered
    await loaded.xack(KEYS.stream, "g", *read[:10])  # ... of which 20 still pending
    await loaded.xreadgroup("slow", "c2", {KEYS.stream: ">"}, count=25)
    await loaded.xack(KEYS.stream, "slow", *reply.ids[:25])  # slow: 25 done, none pending

    removed = await trim_stream(loaded, KEYS, keep=5)

    remaining = [entry_id for entry_id, _ in await loaded.xrange(KEYS.stream) or []]
    assert removed == 10
    assert remaining == reply.ids[10:]  # g's oldest pending entry is the 11th


async def test_trim_keeps_the_newest_entries_and_waits_for_a_group(loaded: Redis) -> None:
    reply = await append_one(loaded, Segment(EVENTS))
    assert isinstance(reply, Appended)
    assert await trim_stream(loaded, KEYS, keep=5) == 0  # no group yet: all still needed
    await loaded.xgroup_create(KEYS.stream, "g", id="$")  # everything already consumed
    assert await trim_stream(loaded, KEYS, keep=5) == 45
    assert await loaded.xlen(KEYS.stream) == 5


async def test_the_append_functions_stamp_is_formatted_as_the_producers(loaded: Redis) -> None:
    rng = random.Random(11)
    edges = [
        to_epoch_ms(dt.datetime.fromisoformat(text))
        for text in (
            "1970-01-01T00:00:00Z", "1999-12-31T23:59:59.999Z", "2000-02-29T12:00:00.001Z",
            "2000-03-01T00:00:00Z", "2024-02-29T23:59:59.500Z", "2100-02-28T00:00:00Z",
            "2100-03-01T00:00:00.010Z", "9999-12-31T23:59:59.999Z",
        )
    ]  # fmt: skip
    script = PRODUCER.local_function("rfc3339") + "return rfc3339(tonumber(ARGV[1]))"
    for ms in edges + [rng.randrange(0, 253_402_300_800_000) for _ in range(300)]:
        stamp = await call(loaded, "EVAL", script, 0, ms)
        assert stamp.decode() == format_ms(ms), ms
