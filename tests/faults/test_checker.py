"""The loss checker itself: it must see every kind of loss it claims to see.

The series are written here directly (no services), so each case is exactly one defect.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from tests.faults.checker import Event, Fate, Outcome, check, fate_of, table

from ingest_shared import keys as k
from ingest_shared.keys import Rollup
from ingest_shared.redis_client import call
from ingest_shared.settings import Settings
from ingest_shared.timeseries import SeriesLayout, ensure_series

if TYPE_CHECKING:
    from redis.asyncio import Redis

SETTINGS = Settings(
    rollups=(Rollup("avg", 1000), Rollup("count", 1000), Rollup("max", 1000)), stream_shards=1
)
KEYS = SETTINGS.keys
LAYOUT = SeriesLayout(retention_ms=0, rollup_retention_ms=0)
BASE_MS = 1_700_000_000_000
SOURCES = ("dev-0", "dev-1")


def events(count: int) -> list[Event]:
    """Two devices, one event every 100 ms each: 10 per bucket per device."""
    return [
        Event(n, "load", SOURCES[n % 2], BASE_MS + (n // 2) * 100 + n % 2) for n in range(count)
    ]


async def store(redis: Redis, stored: list[Event]) -> None:
    """Write ``stored`` as the worker would: both raw series, in timestamp order."""
    await ensure_series(redis, KEYS, LAYOUT, {("load", s) for s in SOURCES}, KEYS.shards[0])
    for event in sorted(stored, key=lambda e: e.timestamp_ms):
        for key in (KEYS.raw("load"), KEYS.source_raw("load", event.source)):
            await call(redis, "TS.ADD", key, event.timestamp_ms, event.n)


def answered(sent: list[Event], status: int = 200, detail: str = "") -> list[Outcome]:
    return [Outcome([event], 0.0, status, detail) for event in sent]


async def test_everything_stored_passes_and_checks_every_closed_bucket(redis: Redis) -> None:
    sent = events(60)  # 3 s per device: buckets 0 and 1 closed, bucket 2 open
    await store(redis, sent)
    report = await check(redis, SETTINGS, answered(sent))
    assert report.ok, report.problems()
    assert (report.accepted, report.stored, report.lost) == (60, 60, [])
    assert report.buckets == len(SOURCES) * 2 * len(KEYS.rollups)
    assert table([report])[2].startswith("| ")


async def test_an_accepted_event_in_no_series_is_lost_unless_dead_lettered(
    redis: Redis,
) -> None:
    sent = events(40)
    await store(redis, sent[2:])
    payload = json.dumps(sent[1].body)
    await redis.xadd(KEYS.dead_letter, {k.DL_PAYLOAD: payload, k.DL_REASON: "because"})
    report = await check(redis, SETTINGS, answered(sent))
    assert report.lost == [sent[0]]
    assert report.dead_lettered == 1
    assert not report.ok
    assert "1 accepted events lost" in report.problems()[0]


async def test_a_refused_event_that_appears_is_a_duplicate_and_a_maybe_event_is_not(
    redis: Redis,
) -> None:
    sent = events(40)
    await store(redis, sent)
    outcomes = answered(sent[2:])
    outcomes += answered([sent[0]], 503, "Redis is unavailable, nothing was enqueued")
    outcomes += answered([sent[1]], 503, "the events MAY have been enqueued")
    report = await check(redis, SETTINGS, outcomes)
    assert report.refused_seen == [sent[0]]
    assert report.duplicated == [sent[0].reading]
    assert (report.maybe, report.maybe_seen) == (1, 1)
    assert not report.lost


async def test_a_stored_sample_nobody_sent_is_a_duplicate(redis: Redis) -> None:
    sent = events(40)
    await store(redis, sent)
    await call(redis, "TS.ADD", KEYS.source_raw("load", "dev-0"), BASE_MS + 7, 99)
    report = await check(redis, SETTINGS, answered(sent))
    assert report.duplicated == [("dev-0", BASE_MS + 7)]


async def test_a_wrong_value_and_a_wrong_rollup_bucket_fail(redis: Redis) -> None:
    sent = events(60)
    await store(redis, sent)
    await call(redis, "TS.ADD", KEYS.source_raw("load", "dev-0"), sent[0].timestamp_ms, -1)
    avg = KEYS.source_rollup_of("load", "dev-1", Rollup("avg", 1000))
    await call(redis, "TS.ADD", avg, BASE_MS, 12345, "ON_DUPLICATE", "LAST")
    report = await check(redis, SETTINGS, answered(sent))
    assert report.wrong == [sent[0]]
    # dev-0's bucket follows the wrong value; dev-1's avg was overwritten.
    assert len(report.bucket_mismatches) == 1
    assert "dev-1 avg_1000" in report.bucket_mismatches[0]


async def test_entries_left_pending_or_undelivered_fail(redis: Redis) -> None:
    await redis.xgroup_create(KEYS.stream, SETTINGS.consumer_group, id="0", mkstream=True)
    for _ in range(3):
        await redis.xadd(KEYS.stream, {"source": "x", "metric": "other", "value": "1"})
    await redis.xreadgroup(SETTINGS.consumer_group, "c", {KEYS.stream: ">"}, count=1)
    report = await check(redis, SETTINGS, [])
    assert (report.pending, report.undelivered) == (1, 2)
    assert not report.ok


@pytest.mark.parametrize(
    ("status", "detail", "fate"),
    [
        (200, "", Fate.ACCEPTED),
        (422, "validation failed", Fate.REFUSED),
        (429, "rate limit exceeded; nothing was enqueued", Fate.REFUSED),
        (503, "Redis is unavailable, nothing was enqueued; retry later", Fate.REFUSED),
        (503, "Redis did not answer in time: the events MAY have been enqueued", Fate.MAYBE),
        (503, "not confirmed durable: ...; the events may be in the stream already", Fate.MAYBE),
        (500, "Internal server error", Fate.MAYBE),
        (0, "ReadTimeout", Fate.MAYBE),
    ],
)
def test_what_an_answer_promises(status: int, detail: str, fate: Fate) -> None:
    assert fate_of(status, detail) is fate
