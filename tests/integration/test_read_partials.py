"""A metric's per-shard partials merged at query time: the summary, /metrics, /charts and the
fleet range see one exact series whatever the number of shards (reading/partials.py)."""

from __future__ import annotations

import dataclasses
import itertools
from typing import TYPE_CHECKING, Any

import pytest
from tests.readside import BASE_MS, app_client, event

from ingest_producer.asgi import build_app
from ingest_shared.keys import Rollup
from ingest_shared.redis_client import call
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from tests.conftest import AppClient
    from tests.readside import Client

    from ingest_devtools.localcluster import LocalCluster
    from ingest_shared.keys import Keys

MINUTE = 60_000
B0, B1, B2 = BASE_MS, BASE_MS + MINUTE, BASE_MS + 2 * MINUTE
AVG = Rollup("avg", MINUTE)
SETTINGS = Settings(stream_shards=2)
KEYS = SETTINGS.keys
# The names of the releases before sharding (one stream on one node), built by keys.py.
LEGACY = Settings(stream_shards=1).keys


def source_on(keys: Keys, index: int, prefix: str = "dev") -> str:
    """A source name whose events go to shard ``index``."""
    names = (f"{prefix}-{n}" for n in itertools.count())
    return next(name for name in names if keys.shard_of_source(name).index == index)


# X writes only shard 0's partials, Y only shard 1's.
X, Y = source_on(KEYS, 0), source_on(KEYS, 1)


@pytest.fixture
async def client(redis: Redis, redis_url: str) -> AsyncIterator[Client]:
    async with app_client(SETTINGS, redis_url) as c:
        yield c


async def ingest(http: httpx.AsyncClient, *events: dict[str, Any]) -> None:
    """POST ``events`` as one batch, then process every shard until nothing is left."""
    response = await http.post("/api/ingest/events", json=list(events))
    assert response.status_code == 200, response.text
    while True:
        done = await http.post(
            "/api/ingest/workers/process", json={"consumer": "w1", "count": 10_000}
        )
        assert done.status_code == 200, done.text
        if done.json()["read"] == 0:
            return


async def get_json(http: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await http.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def summary_of(http: httpx.AsyncClient, metric: str) -> Any:
    """The summary's entry of ``metric``."""
    metrics = (await get_json(http, "/api/ingest/summary"))["metrics"]
    [one] = [m for m in metrics if m["metric"] == metric]
    return one


async def catalog_of(http: httpx.AsyncClient, metric: str) -> Any:
    """/metrics' entry of ``metric``."""
    metrics = (await get_json(http, "/api/ingest/metrics"))["metrics"]
    [one] = [m for m in metrics if m["metric"] == metric]
    return one


def point(timestamp: int, value: float | None) -> dict[str, Any]:
    return {"timestampMs": timestamp, "value": value}


async def create_legacy(redis: Redis, metric: str, *samples: tuple[int, float]) -> None:
    """An earlier release's per-metric series (no shard label) with its avg rollup."""
    raw, rollup = LEGACY.raw(metric), LEGACY.metric_rollup_of(metric, LEGACY.shards[0], AVG)
    await call(redis, "TS.CREATE", raw, "LABELS", "metric", metric, "kind", "raw")
    labels = ("metric", metric, "kind", "rollup", "agg", "avg", "bucketMs", MINUTE)
    await call(redis, "TS.CREATE", rollup, "LABELS", *labels)
    await call(redis, "TS.CREATERULE", raw, rollup, "AGGREGATION", "avg", MINUTE)
    for timestamp, value in samples:
        await call(redis, "TS.ADD", raw, timestamp, value)
    await redis.sadd(KEYS.metrics, metric)


async def test_the_fleet_average_weighs_every_sample_across_shards(
    client: Client, redis: Redis
) -> None:
    await ingest(
        client,
        event("cpu", X, 10.0, B0),
        *(event("cpu", Y, 20.0, B0 + i * 1_000) for i in (1, 2, 3)),
        event("cpu", X, 0.0, B1),  # closes minute 0 in both partials
        event("cpu", Y, 0.0, B1),
    )

    summary = await summary_of(client, "cpu")
    catalog = await catalog_of(client, "cpu")

    # Two partials, each with the parts of avg: sum and count.
    partials = await call(redis, "TS.QUERYINDEX", "metric=cpu", "kind=raw")
    assert sorted(partials) == sorted(KEYS.metric_raw("cpu", s).encode() for s in KEYS.shards)
    # (10 + 20 + 20 + 20) / 4; an average of the partials' averages would be 15.
    assert summary["rollup"] == point(B0, 17.5)
    assert summary["rollups"] == {"avg_60000": point(B0, 17.5)}
    assert catalog["rollups"] == {"avg_60000": point(B0, 17.5)}


async def test_the_newest_closed_bucket_merges_partials_that_still_fill_it(
    client: Client,
) -> None:
    await ingest(
        client,
        event("cpu", X, 10.0, B0),
        event("cpu", X, 30.0, B1),
        event("cpu", X, 0.0, B2),  # X has closed minutes 0 and 1
        event("cpu", Y, 20.0, B0),
        event("cpu", Y, 50.0, B1 + 1_000),
        event("cpu", Y, 70.0, B1 + 2_000),  # Y's minute 1 is still open
    )

    summary = await summary_of(client, "cpu")

    # Minute 1, the newest any partial closed, with Y's open part: (30 + 50 + 70) / 3.
    # Without Y's open bucket it would be 30; the oldest closed minute would give 15.
    assert summary["rollup"] == point(B1, 50.0)
    assert (await catalog_of(client, "cpu"))["rollups"] == {"avg_60000": point(B1, 50.0)}


async def test_max_and_range_merge_exactly_and_last_cannot_be_merged(
    redis: Redis, redis_url: str
) -> None:
    rollups = tuple(Rollup(agg, MINUTE) for agg in ("avg", "max", "range", "last"))
    async with app_client(dataclasses.replace(SETTINGS, rollups=rollups), redis_url) as http:
        await ingest(
            http,
            event("cpu", X, 1.0, B0),
            event("cpu", Y, 9.0, B0 + 1_000),
            event("cpu", Y, 5.0, B0 + 2_000),
            event("cpu", X, 0.0, B1),
            event("cpu", Y, 0.0, B1),
        )
        summary = await summary_of(http, "cpu")
        catalog = await catalog_of(http, "cpu")

    expected = {
        "avg_60000": point(B0, 5.0),
        "max_60000": point(B0, 9.0),
        # max of maxes - min of mins; the largest partial range would be 4.
        "range_60000": point(B0, 8.0),
        "last_60000": None,
    }
    assert summary["rollups"] == catalog["rollups"] == expected
    assert summary["rollup"] == point(B0, 5.0)


async def test_the_newest_raw_is_the_newest_of_every_partial_and_an_earlier_release(
    client: Client, redis: Redis
) -> None:
    await create_legacy(redis, "cpu", (B0 - MINUTE, 9.0))
    await create_legacy(redis, "mem", (B0 - MINUTE, 7.0))
    # Opposite orders for cpu and gpu: whichever partial a reply lists last, one would fail.
    await ingest(
        client,
        event("cpu", X, 1.0, B0 + 5_000),
        event("cpu", Y, 2.0, B0 + 1_000),
        event("gpu", X, 3.0, B0 + 1_000),
        event("gpu", Y, 4.0, B0 + 5_000),
    )

    found = {
        m["metric"]: m["raw"] for m in (await get_json(client, "/api/ingest/summary"))["metrics"]
    }
    latest = {
        m["metric"]: m["latest"] for m in (await get_json(client, "/api/ingest/metrics"))["metrics"]
    }

    expected = {
        "cpu": point(B0 + 5_000, 1.0),
        "gpu": point(B0 + 5_000, 4.0),
        "mem": point(B0 - MINUTE, 7.0),  # only the earlier release's series
    }
    assert found == latest == expected


async def test_the_last_bucket_is_open_while_any_partial_holds_the_newest_sample(
    client: Client,
) -> None:
    for metric, (first, second) in {"cpu": (X, Y), "gpu": (Y, X)}.items():
        await ingest(
            client,
            event(metric, first, 1.0, B0),
            event(metric, first, 2.0, B1 + 1_000),  # the newest sample: minute 1 is open
            event(metric, second, 3.0, B0 + 2_000),
        )

    charts = (await get_json(client, "/api/ingest/charts", window="1h"))["charts"]
    ranges = [
        await get_json(client, f"/api/ingest/metrics/{metric}/range", agg="avg", bucketMs=MINUTE)
        for metric in ("cpu", "gpu")
    ]

    assert [(c["metric"], c["rollup"][-1]["timestampMs"], c["lastBucketOpen"]) for c in charts] == [
        ("cpu", B1, True),
        ("gpu", B1, True),
    ]
    assert [(r["points"][-1]["timestampMs"], r["lastBucketOpen"]) for r in ranges] == [
        (B1, True),
        (B1, True),
    ]


async def test_an_earlier_release_rollup_answers_until_a_partial_closes_a_bucket(
    client: Client, redis: Redis
) -> None:
    old = B0 - 3 * MINUTE
    await create_legacy(redis, "cpu", (old, 4.0), (old + 1_000, 6.0), (old + MINUTE, 100.0))

    only_legacy = await summary_of(client, "cpu")
    await ingest(client, event("cpu", X, 10.0, B0))  # the partial's minute is still open
    open_partial = await summary_of(client, "cpu")
    await ingest(client, event("cpu", X, 0.0, B1))
    closed_partial = await summary_of(client, "cpu")

    assert (only_legacy["raw"], only_legacy["rollup"]) == (
        point(old + MINUTE, 100.0),
        point(old, 5.0),
    )
    assert (open_partial["raw"], open_partial["rollup"]) == (point(B0, 10.0), point(old, 5.0))
    assert (closed_partial["raw"], closed_partial["rollup"]) == (point(B1, 0.0), point(B0, 10.0))


async def test_a_metric_label_no_worker_wrote_never_reaches_a_filter(
    client: Client, redis: Redis
) -> None:
    # Series made by hand whose metric label ("=" is allowed in a label value, not in a
    # metric name) would break the FILTER list of the metrics sharing a bucket: a 500.
    shard = KEYS.shards[0]
    for agg in ("sum", "count"):
        key = KEYS.metric_rollup_of("odd", shard, Rollup(agg, MINUTE))
        labels = ("metric", "kind=raw", "shard", 0, "kind", "rollup", "agg", agg)
        await call(redis, "TS.CREATE", key, "LABELS", *labels, "bucketMs", MINUTE)
        await call(redis, "TS.ADD", key, B0, 1.0)
    await ingest(client, event("cpu", X, 4.0, B0), event("cpu", X, 0.0, B1))

    assert (await summary_of(client, "cpu"))["rollup"] == point(B0, 4.0)


@pytest.mark.parametrize("metrics", [2, 20])
async def test_summary_commands_do_not_grow_with_the_number_of_metrics(
    client: Client, redis: Redis, metrics: int
) -> None:
    names = [f"m{i:02d}" for i in range(metrics)]
    events = []
    for name in names[::2]:  # minute 0 is the newest closed bucket: (1 + 3) / 2
        events += [event(name, X, 1.0, B0), event(name, Y, 3.0, B0 + 1_000)]
        events += [event(name, X, 100.0, B1)]
    for name in names[1::2]:  # minute 1 is: (5 + 7) / 2
        events += [event(name, X, 1.0, B0), event(name, X, 5.0, B1), event(name, X, 100.0, B2)]
        events += [event(name, Y, 7.0, B1 + 1_000)]
    await ingest(client, *events)
    await redis.config_resetstat()

    found = (await get_json(client, "/api/ingest/summary"))["metrics"]
    stats = await redis.info("commandstats")

    assert {m["metric"]: m["rollup"] for m in found} == {
        name: point(B0, 2.0) if i % 2 == 0 else point(B1, 6.0) for i, name in enumerate(names)
    }

    def calls(command: str) -> int:
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    # One TS.MGET of the raw series, one of the closed buckets; one TS.MRANGE per part of avg
    # (sum, count) per distinct newest closed bucket (minutes 0 and 1).
    assert (calls("ts.mget"), calls("ts.mrange")) == (2, 4)
    assert calls("ts.get") == calls("ts.range") == 0


async def test_partials_on_every_cluster_node_merge_into_one_answer(
    redis_cluster: LocalCluster, redis_cluster_client: RedisCluster, serve: AppClient
) -> None:
    settings = dataclasses.replace(
        SETTINGS, stream_shards=4, redis_mode="auto", redis_url=redis_cluster.url
    )
    keys = dataclasses.replace(settings, redis_mode="cluster").keys
    on = [source_on(keys, index) for index in range(4)]
    async with serve(build_app(settings)) as http:
        await ingest(
            http,
            event("cpu", on[0], 10.0, B0),
            event("cpu", on[0], 0.0, B1),  # closes minute 0 on shard 0 only
            event("cpu", on[1], 20.0, B0 + 4_000),
            *(event("cpu", on[2], 20.0, B0 + i * 1_000) for i in (1, 2, 3)),
            event("cpu", on[3], 5.0, B1 + 9_000),  # the newest sample
        )
        summary = await summary_of(http, "cpu")
        catalog = await catalog_of(http, "cpu")

    ports = set()
    for shard in keys.shards:
        node = redis_cluster_client.get_node_from_key(keys.metric_raw("cpu", shard))
        assert node is not None
        ports.add(node.port)
    assert len(ports) == 3  # the partials live on all three primaries
    assert summary["raw"] == catalog["latest"] == point(B1 + 9_000, 5.0)
    # (10 + 20 + 3 x 20) / 5, from partials on every node, closed or still open.
    assert summary["rollup"] == point(B0, 18.0)
    assert catalog["rollups"] == {"avg_60000": point(B0, 18.0)}
