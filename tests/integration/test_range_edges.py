"""An aggregated range answers the same whichever path serves it: a rollup serves whole
buckets inside [from, to] only, the bucket `to` cuts comes from raw samples, and a rollup
configured after the data came (for one device or the fleet) never hides what the raw series
hold.

Two apps read the same series: one with minute rollups (avg, sum, count, min, max), one with
none of them, which Redis answers from raw samples (the reference). Random samples, random
windows, random changes of the rollups (seeded: a failure names its window).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from typing import TYPE_CHECKING, Any

import pytest
from tests.readside import (
    BASE_MS,
    RecordingConnection,
    app_client,
    event,
    ingest,
    recording_client,
)

from ingest_shared.keys import Rollup
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    import httpx
    from redis.asyncio import Redis

MINUTE = 60_000
AGGS = ("avg", "sum", "count", "min", "max")
ROLLED = Settings(stream_shards=1, rollups=tuple(Rollup(agg, MINUTE) for agg in AGGS))
RAW_ONLY = Settings(stream_shards=1, rollups=(Rollup("max", 7 * MINUTE),))
SOURCES = ("a", "b", "c")
WINDOWS = 40


def samples(seed: int, metric: str, span_ms: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        event(metric, rng.choice(SOURCES), round(rng.uniform(-50, 50), 3), BASE_MS + at)
        for at in sorted(rng.sample(range(span_ms), 120))
    ]


async def answer(client: httpx.AsyncClient, metric: str, **query: Any) -> list[tuple[int, float]]:
    response = await client.get(f"/api/ingest/metrics/{metric}/range", params=query)
    assert response.status_code == 200, response.text
    return [(p["timestampMs"], p["value"]) for p in response.json()["points"]]


def same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> bool:
    return [t for t, _ in got] == [t for t, _ in want] and all(
        g == pytest.approx(w, rel=1e-9, abs=1e-9) for (_, g), (_, w) in zip(got, want, strict=True)
    )


def windows(seed: int, span_ms: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    found = []
    for _ in range(WINDOWS):
        start = BASE_MS + rng.randrange(-MINUTE, span_ms)
        found.append((start, start + rng.randrange(1, span_ms)))
    return found


async def test_rollup_answers_equal_raw_answers_for_any_window(
    redis: Redis, redis_url: str
) -> None:
    span = 9 * MINUTE
    async with app_client(ROLLED, redis_url) as rolled, app_client(RAW_ONLY, redis_url) as raw:
        await ingest(rolled, *samples(1, "cpu", span))
        for start, end in windows(2, span):
            for agg in AGGS:
                for source in (*SOURCES, None):
                    query: dict[str, Any] = {"agg": agg, "bucketMs": MINUTE}
                    query |= {"from": start, "to": end}
                    if source is not None:
                        query["source"] = source
                    want = await answer(raw, "cpu", **query)
                    got = await answer(rolled, "cpu", **query)
                    assert same(got, want), (query, got, want)


async def test_a_rollup_added_after_the_data_never_answers_less_than_raw(
    redis: Redis, redis_url: str
) -> None:
    span = 8 * MINUTE
    early = [e for e in samples(3, "temp", span) if e["source"] == "a"]
    half = len(early) // 2
    async with app_client(RAW_ONLY, redis_url) as raw:
        await ingest(raw, *early[:half])  # stored before the minute rollups exist
    async with app_client(ROLLED, redis_url) as rolled, app_client(RAW_ONLY, redis_url) as raw:
        await ingest(rolled, *early[half:])  # the worker adds the rollups now
        for start, end in [(BASE_MS, BASE_MS + span), *windows(4, span)]:
            for agg in AGGS:
                query = {"agg": agg, "bucketMs": MINUTE, "from": start, "to": end, "source": "a"}
                want = await answer(raw, "temp", **query)
                got = await answer(rolled, "temp", **query)
                assert same(got, want), (query, got, want)


def fleet_and_devices(start: int, end: int) -> list[dict[str, Any]]:
    """Every aggregated query of the window: each aggregation, for the fleet and each device."""
    return [
        {"agg": agg, "bucketMs": MINUTE, "from": start, "to": end}
        | ({} if source is None else {"source": source})
        for agg in AGGS
        for source in (None, *SOURCES)
    ]


@pytest.mark.parametrize("shards", [1, 2], ids=["unsharded", "sharded"])
async def test_a_rollup_added_after_the_data_never_hides_fleet_data(
    redis: Redis, redis_url: str, shards: int
) -> None:
    rolled_settings = dataclasses.replace(ROLLED, stream_shards=shards)
    raw_settings = dataclasses.replace(RAW_ONLY, stream_shards=shards)
    span = 8 * MINUTE
    data = samples(5, "temp", span)
    half = len(data) // 2
    async with app_client(raw_settings, redis_url) as raw:
        await ingest(raw, *data[:half])  # stored before the minute rollups exist
    # a and b report again (the worker adds their rollups); c never does: it has none.
    later = [e for e in data[half:] if e["source"] != "c"]
    async with (
        app_client(rolled_settings, redis_url) as rolled,
        app_client(raw_settings, redis_url) as raw,
    ):
        await ingest(rolled, *later)
        everything = await answer(rolled, "temp", agg="avg", bucketMs=MINUTE, **{"from": BASE_MS})
        assert len(everything) == 8  # the issue saw none
        for start, end in [(BASE_MS, BASE_MS + span), *windows(6, span)]:
            for agg in AGGS:
                query = {"agg": agg, "bucketMs": MINUTE, "from": start, "to": end}
                want = await answer(raw, "temp", **query)
                got = await answer(rolled, "temp", **query)
                assert same(got, want), (query, got, want)


async def drop_minute_rollups(redis: Redis, metric: str, source: str) -> None:
    """What docs/reading-data.md says to do with a rollup taken out of INGEST_ROLLUPS: DEL its
    series (which also removes its rule)."""
    keys = ROLLED.keys
    await redis.delete(*(keys.source_rollup_of(metric, source, r) for r in keys.rollups))


@pytest.mark.parametrize("seed", range(4))
async def test_rollups_changed_on_existing_data_answer_as_raw_does(
    redis: Redis, redis_url: str, seed: int
) -> None:
    # Time slices of random data, each written under minute rollups or none (added, taken
    # out and put back), some devices silent in a slice, some rollups deleted in between.
    rng = random.Random(seed)
    span = 12 * MINUTE
    metric = f"load{seed}"
    data = samples(100 + seed, metric, span)
    cuts = [0, *sorted(rng.sample(range(1, len(data)), 3)), len(data)]
    for phase, (first, last) in enumerate(itertools.pairwise(cuts)):
        settings = RAW_ONLY if phase == 0 else rng.choice((ROLLED, RAW_ONLY))
        if phase and rng.random() < 0.4:
            await drop_minute_rollups(redis, metric, rng.choice(SOURCES))
        reporting = rng.sample(SOURCES, rng.randint(1, len(SOURCES)))
        async with app_client(settings, redis_url) as app:
            await ingest(app, *(e for e in data[first:last] if e["source"] in reporting))
    async with app_client(ROLLED, redis_url) as rolled, app_client(RAW_ONLY, redis_url) as raw:
        for start, end in [(BASE_MS, BASE_MS + span), *windows(seed, span)[:10]]:
            for query in fleet_and_devices(start, end):
                want = await answer(raw, metric, **query)
                got = await answer(rolled, metric, **query)
                assert same(got, want), (query, got, want)


async def test_the_fleet_reads_raw_in_one_more_round_trip_only_where_a_rollup_lacks_data(
    redis: Redis, redis_url: str
) -> None:
    span = 6 * MINUTE
    covered, late = samples(7, "cpu", span), samples(7, "temp", span)
    async with app_client(RAW_ONLY, redis_url) as raw:
        await ingest(raw, *late[:60])
    async with recording_client(ROLLED, redis_url) as rolled:
        await ingest(rolled, *covered, *late[60:])
        # `to` cuts the last minute: its bucket comes from raw in the same round trip.
        query: dict[str, Any] = {"agg": "avg", "bucketMs": MINUTE}
        query |= {"from": BASE_MS, "to": BASE_MS + span - 30_000}
        counted: dict[str, tuple[str, dict[str, int], int]] = {}
        for metric in ("cpu", "temp"):
            await redis.config_resetstat()
            RecordingConnection.reset()
            body = (await rolled.get(f"/api/ingest/metrics/{metric}/range", params=query)).json()
            stats = await redis.info("commandstats")
            commands = {
                name: int(stats.get(f"cmdstat_ts.{name}", {}).get("calls", 0))
                for name in ("mrange", "mget", "range", "get")
            }
            counted[metric] = (body["origin"], commands, RecordingConnection.writes)

    # Covered: one TS.MRANGE per part of avg (sum, count) from the rollups, one per part for
    # the cut minute from raw, two for where each device's rollups begin, one TS.MGET for the
    # newest sample: one round trip, as many commands whatever the number of devices.
    assert counted["cpu"] == ("rollup", {"mrange": 6, "mget": 1, "range": 0, "get": 0}, 1)
    # A rollup added after the data: one more round trip, one TS.MRANGE per part from raw.
    assert counted["temp"] == ("rollup", {"mrange": 8, "mget": 1, "range": 0, "get": 0}, 2)
