"""FILTER queries run on every node and merge: two node clients, disjoint series.

Two servers stand in for two cluster primaries: TS.MRANGE/TS.MGET with FILTER only see the
series of the server they run on, as a cluster node only sees its own slots. (Two databases of
one server would not do: the TimeSeries index spans every database.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from ingest_producer.reading import ranges
from ingest_producer.reading.context import create_read_context
from ingest_producer.reading.fanout import (
    Aggregation,
    Options,
    Reducer,
    fan_out,
    merge_groups,
    mget,
    mrange,
)
from ingest_producer.reading.replies import Series
from ingest_shared.redis_client import call
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.conftest import LocalRedisFactory

SETTINGS = Settings(rollup_bucket_ms=60_000)
KEYS = SETTINGS.keys
BUCKET = 60_000
T0 = 1_800_000_000_000  # a bucket boundary


@pytest.fixture
async def nodes(
    redis: Redis, local_redis_server: LocalRedisFactory
) -> AsyncIterator[tuple[Redis, Redis]]:
    first = redis
    second = Redis.from_url(local_redis_server().url)
    yield first, second
    await second.aclose()


async def device(node: Redis, source: str, samples: list[tuple[int, float]]) -> None:
    key = KEYS.source_raw("cpu", source)
    labels = ["metric", "cpu", "source", source, "kind", "source-raw"]
    await call(node, "TS.CREATE", key, "LABELS", *labels)
    for timestamp, value in samples:
        await call(node, "TS.ADD", key, timestamp, value)


async def test_fleet_average_merges_partial_sums_and_counts_across_nodes(
    nodes: tuple[Redis, Redis],
) -> None:
    first, second = nodes
    await device(first, "a", [(T0, 10.0)])
    await device(second, "b", [(T0 + 1, 20.0), (T0 + 2, 20.0), (T0 + 3, 20.0)])
    ctx = create_read_context(SETTINGS, first, [first, second])
    query = ranges.RangeQuery("cpu", None, "avg", BUCKET, T0, T0 + BUCKET - 1)

    both = await ranges.read_range(ctx, query)
    only_first = await ranges.read_range(create_read_context(SETTINGS, first), query)

    assert [(p.timestampMs, p.value) for p in both.points] == [(T0, 17.5)]
    assert [(p.timestampMs, p.value) for p in only_first.points] == [(T0, 10.0)]


@pytest.mark.parametrize(
    ("reducer", "agg", "expected"),
    [(Reducer.SUM, "sum", 70.0), (Reducer.MIN, "min", 10.0), (Reducer.MAX, "max", 20.0)],
)
async def test_grouped_queries_combine_with_their_own_reducer(
    nodes: tuple[Redis, Redis], reducer: Reducer, agg: str, expected: float
) -> None:
    first, second = nodes
    await device(first, "a", [(T0, 10.0)])
    await device(second, "b", [(T0 + 1, 20.0), (T0 + 2, 20.0), (T0 + 3, 20.0)])
    options = Options(aggregation=Aggregation(agg, BUCKET), group_by=("metric", reducer))

    [merged] = await fan_out(
        [first, second], [mrange(T0, T0 + BUCKET, ["metric=cpu", "kind=source-raw"], options)]
    )

    assert [(s.key, s.samples) for s in merged] == [("metric=cpu", [(T0, expected)])]


async def test_per_series_answers_are_concatenated(nodes: tuple[Redis, Redis]) -> None:
    first, second = nodes
    await device(first, "a", [(T0, 1.0)])
    await device(second, "b", [(T0, 2.0)])

    [latest] = await fan_out([first, second], [mget(["kind=source-raw"], ["source"])])

    assert sorted((s.labels["source"], s.samples) for s in latest) == [
        ("a", [(T0, 1.0)]),
        ("b", [(T0, 2.0)]),
    ]


def test_merge_groups_combines_only_equal_timestamps() -> None:
    partials = [
        Series("metric=cpu", {}, [(1, 1.0), (2, 5.0)]),
        Series("metric=cpu", {}, [(2, 3.0), (3, 7.0)]),
        Series("metric=mem", {}, [(1, 9.0)]),
    ]

    merged = {s.key: s.samples for s in merge_groups(partials, Reducer.MIN)}

    assert merged == {"metric=cpu": [(1, 1.0), (2, 3.0), (3, 7.0)], "metric=mem": [(1, 9.0)]}
