"""An aggregated range answers the same whichever path serves it: a rollup serves whole
buckets inside [from, to] only, the bucket `to` cuts comes from raw samples, and a rollup
configured after the data came never hides what the raw series holds.

Two apps read the same series: one with minute rollups (avg, sum, count, min, max), one with
none of them, which Redis answers from raw samples (the reference). Random samples, random
windows (seeded: a failure names its window).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import pytest
from tests.readside import BASE_MS, app_client, event, ingest

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
