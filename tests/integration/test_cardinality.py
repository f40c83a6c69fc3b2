"""Cardinality caps: an event that would create a series (or a metric name) beyond a cap is
refused with a 422 naming the cap, and nothing of its request is enqueued; events of existing
series keep flowing; the caps hold across producers at once; agents' other samples still go."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import REGISTRY
from tests.readside import event, ingest

from ingest_producer.asgi import build_app
from ingest_shared.redis_client import call
from ingest_shared.schema import now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractAsyncContextManager

    import httpx
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from tests.conftest import AppClient

    from ingest_devtools.localcluster import LocalCluster

KEY_A = "cardinality-key-a-0123456789"
KEY_B = "cardinality-key-b-0123456789"
SETTINGS = Settings(stream_shards=1, max_series=3, max_metrics=0, max_series_per_key=0)
KEYS = SETTINGS.keys
STREAM = SETTINGS.stream_key
EVENTS = "/api/ingest/events"
AT = now_ms() - 60_000


@pytest.fixture
def app_with(redis: Redis, redis_url: str, serve: AppClient) -> Callable[..., Any]:
    """Serve the app with SETTINGS changed by keyword arguments."""

    def start(**changes: Any) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        settings = dataclasses.replace(SETTINGS, redis_url=redis_url, **changes)
        return serve(build_app(settings))

    return start


def at(n: int) -> dict[str, Any]:
    """An event of series ``dev-<n>`` of metric ``temp``."""
    return event("temp", f"dev-{n}", float(n), AT + n)


def gauge(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def refused(cap: str) -> float:
    found = REGISTRY.get_sample_value("ingest_producer_series_refused_total", {"cap": cap})
    return found or 0.0


async def test_a_new_series_beyond_the_cap_is_a_422_and_existing_series_keep_flowing(
    app_with: Callable[..., Any], redis: Redis
) -> None:
    async with app_with() as client:
        first = await client.post(EVENTS, json=[at(1), at(2), at(3)])
        assert first.status_code == 200, first.text
        before = await redis.xlen(STREAM)
        refused_before = refused("max_series")

        # A batch holding one new series: refused whole, naming the cap and the event.
        batch = await client.post(EVENTS, json=[at(1), at(4)])
        assert batch.status_code == 422, batch.text
        body = batch.json()
        assert "INGEST_MAX_SERIES=3" in body["detail"]
        assert "nothing was enqueued" in body["detail"]
        assert body["errors"] == [
            {"field": "source", "message": body["errors"][0]["message"], "index": 1}
        ]
        assert "'dev-4'" in body["errors"][0]["message"]
        # A single new event: the same, without an index.
        single = await client.post(EVENTS, json=at(5))
        assert single.status_code == 422, single.text
        assert "index" not in single.json()["errors"][0]
        assert await redis.xlen(STREAM) == before
        assert refused("max_series") == refused_before + 2

        # Series that exist still take events, singly and in batches.
        again = await client.post(EVENTS, json=at(2))
        assert again.status_code == 200, again.text
        more = await client.post(EVENTS, json=[at(3), at(1)])
        assert more.status_code == 200, more.text
        assert await redis.xlen(STREAM) == before + 3
        assert await redis.scard(KEYS.registry_series) == 3
        assert gauge("ingest_registry_series") == 3


async def test_labels_make_distinct_series_and_count_against_the_cap(
    app_with: Callable[..., Any], redis: Redis
) -> None:
    async with app_with(max_series=2) as client:
        room = {**at(1), "labels": {"room": "kitchen"}}
        hall = {**at(1), "labels": {"room": "hall"}}
        cellar = {**at(1), "labels": {"room": "cellar"}}
        assert (await client.post(EVENTS, json=[room, hall])).status_code == 200
        response = await client.post(EVENTS, json=cellar)
        assert response.status_code == 422, response.text
        # The same label set spelled in another order is the same series.
        reordered = {**at(1), "labels": {"room": "hall"}}
        assert (await client.post(EVENTS, json=reordered)).status_code == 200
    assert await redis.scard(KEYS.registry_series) == 2


async def test_the_metric_names_cap_names_the_metric(
    app_with: Callable[..., Any], redis: Redis
) -> None:
    async with app_with(max_series=0, max_metrics=2) as client:
        ok = [event("temp", "dev-1", 1.0, AT), event("hum", "dev-1", 1.0, AT)]
        assert (await client.post(EVENTS, json=ok)).status_code == 200
        # A new series of a known metric is fine; a third metric name is not.
        assert (await client.post(EVENTS, json=event("temp", "dev-2", 1.0, AT))).status_code == 200
        response = await client.post(EVENTS, json=[event("co2", "dev-1", 1.0, AT)])
        assert response.status_code == 422, response.text
        error = response.json()["errors"][0]
        assert error["field"] == "metric"
        assert "INGEST_MAX_METRICS=2" in error["message"]
    assert set(await redis.smembers(KEYS.registry_metrics)) == {b"temp", b"hum"}


async def test_each_write_key_has_its_own_series_cap(
    app_with: Callable[..., Any], redis: Redis
) -> None:
    settings = {
        "write_keys": frozenset({KEY_A, KEY_B}),
        "max_series": 0,
        "max_series_per_key": 2,
    }
    a = {"x-api-key": KEY_A}
    b = {"x-api-key": KEY_B}
    async with app_with(**settings) as client:
        assert (await client.post(EVENTS, json=[at(1), at(2)], headers=a)).status_code == 200
        over = await client.post(EVENTS, json=at(3), headers=a)
        assert over.status_code == 422, over.text
        assert "INGEST_MAX_SERIES_PER_KEY=2" in over.json()["detail"]
        # Another key has a budget of its own, also for series the first one created.
        assert (await client.post(EVENTS, json=[at(2), at(3)], headers=b)).status_code == 200
        assert (await client.post(EVENTS, json=at(4), headers=b)).status_code == 422
        # Key A's own series still flow.
        assert (await client.post(EVENTS, json=at(1), headers=a)).status_code == 200
    assert await redis.scard(KEYS.registry_series) == 3


async def test_producers_at_once_never_pass_the_cap_together(
    app_with: Callable[..., Any], redis: Redis
) -> None:
    # Two apps, each with its own Redis client and memory of admitted series, race 40 new
    # series: exactly the cap's worth is admitted.
    async with app_with(max_series=10) as one, app_with(max_series=10) as two:
        clients = (one, two)
        responses = await asyncio.gather(
            *(clients[n % 2].post(EVENTS, json=at(n)) for n in range(40))
        )
    statuses = [response.status_code for response in responses]
    assert statuses.count(200) == 10, statuses
    assert statuses.count(422) == 30, statuses
    assert await redis.scard(KEYS.registry_series) == 10
    assert await redis.xlen(STREAM) == 10


async def test_known_series_cost_no_registry_command(
    app_with: Callable[..., Any], redis: Redis
) -> None:
    async with app_with() as client:
        assert (await client.post(EVENTS, json=[at(1), at(2)])).status_code == 200
        await redis.config_resetstat()
        for _ in range(5):
            assert (await client.post(EVENTS, json=[at(1), at(2)])).status_code == 200
            assert (await client.post(EVENTS, json=at(1))).status_code == 200
        stats = await redis.info("commandstats")
    assert "cmdstat_sismember" not in stats
    assert "cmdstat_scard" not in stats


async def test_with_every_cap_off_the_registry_is_not_used(
    app_with: Callable[..., Any], redis: Redis
) -> None:
    async with app_with(max_series=0, max_metrics=0) as client:
        assert (await client.post(EVENTS, json=[at(n) for n in range(20)])).status_code == 200
    assert not await redis.exists(KEYS.registry_series, KEYS.registry_seeded)


async def test_the_registry_is_seeded_with_the_series_that_existed_before_it(
    app_with: Callable[..., Any], redis: Redis
) -> None:
    # Data written by a producer without caps (a release before them), then processed.
    async with app_with(max_series=0, max_metrics=0) as client:
        await ingest(client, at(1), at(2), event("hum", "dev-1", 1.0, AT))
    assert not await redis.exists(KEYS.registry_series)

    async with app_with(max_series=4) as client:
        assert await redis.scard(KEYS.registry_series) == 3
        assert set(await redis.smembers(KEYS.registry_metrics)) == {b"temp", b"hum"}
        assert (await client.post(EVENTS, json=at(3))).status_code == 200
        response = await client.post(EVENTS, json=at(4))
        assert response.status_code == 422, response.text
        assert (await client.post(EVENTS, json=at(2))).status_code == 200


async def test_an_agents_samples_of_new_series_beyond_the_cap_are_refused_one_by_one(
    app_with: Callable[..., Any], redis: Redis
) -> None:
    async with app_with(max_series=2) as client:
        ns = (AT // 1000) * 1_000_000_000
        lines = "\n".join(f"temp,host=dev-{n} value={n} {ns}" for n in range(1, 4))
        response = await client.post("/api/v2/write", content=lines)
        # InfluxDB's answer to a partial write: what fitted is stored, the rest listed.
        assert response.status_code == 400, response.text
        assert "INGEST_MAX_SERIES=2" in response.text
    assert await redis.xlen(STREAM) == 2
    letters = await call(redis, "XRANGE", KEYS.shards[0].dead_letter, "-", "+")
    assert len(letters) == 1
    fields = letters[0][1]
    assert b"INGEST_MAX_SERIES=2" in fields[b"reason"]
    # The refused sample is kept as the event it would have been: replayable once allowed.
    assert b"dev-3" in fields[b"payload"]
    assert await call(redis, "SCARD", KEYS.registry_series) == 2


async def test_the_caps_hold_on_a_cluster(
    redis_cluster: LocalCluster, redis_cluster_client: RedisCluster, serve: AppClient
) -> None:
    # Every registry key shares the metrics set's slot: one ingest_admit call per request,
    # whatever shards its events go to; seeding copies that set within the slot.
    settings = dataclasses.replace(
        SETTINGS, stream_shards=4, redis_mode="auto", redis_url=redis_cluster.url, max_series=5
    )
    keys = dataclasses.replace(settings, redis_mode="cluster").keys
    async with serve(build_app(settings)) as client:
        await redis_cluster_client.delete(
            keys.registry_series, keys.registry_metrics, keys.registry_seeded
        )
        first = await client.post(EVENTS, json=[at(n) for n in range(5)])
        assert first.status_code == 200, first.text
        over = await client.post(EVENTS, json=[at(1), at(7)])
        assert over.status_code == 422, over.text
        assert (await client.post(EVENTS, json=[at(4), at(0)])).status_code == 200
    assert await redis_cluster_client.scard(keys.registry_series) == 5


async def test_the_summary_shows_the_counts_and_the_caps(
    app_with: Callable[..., Any], redis: Redis
) -> None:
    async with app_with(max_series=3, max_metrics=0) as client:
        assert (await client.post(EVENTS, json=[at(1), at(2)])).status_code == 200
        summary = await client.get("/api/ingest/summary")
    assert summary.status_code == 200, summary.text
    assert summary.json()["cardinality"] == {
        "series": 2,
        "maxSeries": 3,
        "metrics": 1,
        "maxMetrics": None,
    }
