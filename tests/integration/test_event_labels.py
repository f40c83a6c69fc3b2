"""Events with labels: one series per label set, labels stored on it and read back by the
range and sources queries, filterable; bad labels refused with a 422 naming them."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import pytest
from tests.readside import BASE_MS, app_client, event, ingest

from ingest_producer.asgi import build_app
from ingest_shared import keys as k
from ingest_shared.keys import Keys
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

SETTINGS = Settings()
# Commas and parentheses: values TS.CREATE refuses as they are (stored percent-encoded).
BUILD = {"tags": "netgo,builtinassets (x)", "version": "100%"}


@pytest.fixture
async def client(redis: Redis, redis_url: str) -> AsyncIterator[Client]:
    async with app_client(SETTINGS, redis_url) as c:
        yield c


def labelled(metric: str, source: str, value: float, at: int, **labels: str) -> dict[str, Any]:
    return {**event(metric, source, value, at), "labels": labels}


async def get_range(client: httpx.AsyncClient, metric: str, **params: Any) -> Any:
    response = await client.get(f"/api/ingest/metrics/{metric}/range", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def points(body: Any) -> list[tuple[int, float, dict[str, str] | None]]:
    return [(p["timestampMs"], p["value"], p.get("labels")) for p in body["points"]]


async def test_each_label_set_is_its_own_series_and_reads_back_with_its_labels(
    client: Client, redis: Redis
) -> None:
    await ingest(
        client,
        labelled("cpu", "host1", 10.0, BASE_MS, cpu="cpu0", mode="idle"),
        labelled("cpu", "host1", 20.0, BASE_MS, cpu="cpu1", mode="idle"),
        labelled("cpu", "host1", 30.0, BASE_MS + 1, mode="idle", cpu="cpu0"),
    )

    body = await get_range(client, "cpu", source="host1")
    assert points(body) == [
        (BASE_MS, 10.0, {"cpu": "cpu0", "mode": "idle"}),
        (BASE_MS, 20.0, {"cpu": "cpu1", "mode": "idle"}),
        (BASE_MS + 1, 30.0, {"cpu": "cpu0", "mode": "idle"}),
    ]
    # Same value at the same time in two label sets: neither overwrote the other.
    narrowed = await get_range(client, "cpu", source="host1", label=["cpu=cpu1"])
    assert points(narrowed) == [(BASE_MS, 20.0, {"cpu": "cpu1", "mode": "idle"})]
    # The fleet across label sets too.
    fleet = await get_range(client, "cpu", label=["mode=idle"], agg="count", bucketMs=60_000)
    assert [p["value"] for p in fleet["points"]] == [3.0]
    series = await call(
        redis, "TS.QUERYINDEX", f"{k.LABEL_METRIC}=cpu", f"{k.LABEL_KIND}={k.KIND_SOURCE_RAW}"
    )
    assert len(series) == 2


async def test_label_values_with_commas_and_parentheses_round_trip(
    client: Client, redis: Redis
) -> None:
    await ingest(client, labelled("build", "prom:9090", 1.0, BASE_MS, **BUILD))

    body = await get_range(client, "build", source="prom:9090")
    assert points(body) == [(BASE_MS, 1.0, BUILD)]
    filtered = await get_range(client, "build", label=[f"tags={BUILD['tags']}"])
    assert points(filtered) == [(BASE_MS, 1.0, BUILD)]
    sources = (await client.get("/api/ingest/sources", params={"metric": "build"})).json()
    [device] = sources["sources"]
    assert device["source"] == "prom:9090"
    assert device["metrics"][0]["labels"] == BUILD


async def test_events_without_labels_keep_their_series_and_answers(
    client: Client, redis: Redis
) -> None:
    await ingest(client, event("temp", "dev-1", 21.5, BASE_MS))

    assert await redis.exists(Keys("telemetry:events", "x", "y").source_raw("temp", "dev-1"))
    body = await get_range(client, "temp", source="dev-1")
    assert body["points"] == [{"timestampMs": BASE_MS, "value": 21.5}]
    [(_, fields)] = await call(
        redis, "XRANGE", SETTINGS.keys.shard_of_source("dev-1").stream, "-", "+"
    )
    assert list(fields) == [b"source", b"metric", b"value", b"occurredAt"]


async def test_last_of_a_source_is_given_per_label_set(client: Client) -> None:
    await ingest(
        client,
        labelled("disk", "h", 1.0, BASE_MS, dev="sda"),
        labelled("disk", "h", 2.0, BASE_MS, dev="sdb"),
        labelled("disk", "h", 3.0, BASE_MS + 1, dev="sdb"),
    )
    bucket = BASE_MS // 60_000 * 60_000

    both = await get_range(client, "disk", source="h", agg="last")
    assert points(both) == [(bucket, 1.0, {"dev": "sda"}), (bucket, 3.0, {"dev": "sdb"})]
    one = await get_range(client, "disk", source="h", agg="last", label=["dev=sdb"])
    assert points(one) == [(bucket, 3.0, {"dev": "sdb"})]


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        ({"kind": "x"}, "(reserved)"),
        ({"1cpu": "x"}, "a letter or `_`"),
        ({"cpu": ""}, "values must be 1"),
        ({"cpu": "a\nb"}, "labels"),
        ({f"l{i}": "v" for i in range(33)}, "labels"),
        ({"cpu": "x" * 257}, "labels"),
    ],
)
async def test_bad_labels_are_refused_naming_them(
    client: Client, redis: Redis, labels: dict[str, str], words: str
) -> None:
    body = {**event("cpu", "h", 1.0, BASE_MS), "labels": labels}

    for path, payload in (("/api/ingest/events", [body]), ("/api/ingest/events", body)):
        response = await client.post(path, json=payload)
        assert response.status_code == 422, response.text
        assert "labels" in response.text
        assert words in response.text
    assert [await redis.xlen(shard.stream) for shard in SETTINGS.keys.shards] == [0] * 8


async def test_bad_label_filters_are_refused(client: Client) -> None:
    for label in ("cpu", "kind=x", "1x=y", "cpu=a\tb", "cpu="):
        response = await client.get(
            "/api/ingest/metrics/cpu/range", params={"source": "h", "label": label}
        )
        assert response.status_code == 422, (label, response.text)
        assert "label" in response.json()["detail"]


async def test_labelled_series_live_in_their_sources_shard_slot_on_a_cluster(
    redis_cluster: LocalCluster, redis_cluster_client: RedisCluster, serve: AppClient
) -> None:
    settings = dataclasses.replace(
        SETTINGS, stream_shards=4, redis_mode="auto", redis_url=redis_cluster.url
    )
    keys = dataclasses.replace(settings, redis_mode="cluster").keys
    async with serve(build_app(settings)) as http:
        await ingest(
            http,
            *(labelled("cpu", f"host{n}", float(n), BASE_MS, cpu=f"cpu{n % 2}") for n in range(8)),
        )
        body = await get_range(http, "cpu", label=["cpu=cpu1"])

    assert [(p["source"], p["value"], p["labels"]) for p in body["points"]] == [
        (f"host{n}", float(n), {"cpu": "cpu1"}) for n in (1, 3, 5, 7)
    ]
    for n in range(8):
        [key] = [
            name
            for node in redis_cluster_client.get_primaries()
            for name in await redis_cluster_client.execute_command(
                "TS.QUERYINDEX",
                "metric=cpu",
                f"source=host{n}",
                "kind=source-raw",
                target_nodes=node,
            )
        ]
        shard = keys.shard_of_source(f"host{n}")
        assert k.hash_tag(key.decode()) == shard.tag
