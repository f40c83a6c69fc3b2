"""GET /api/ingest/metrics/{metric}/range: one device or the fleet, raw or aggregated."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

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
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis
    from tests.readside import Client

MINUTE = 60_000
B0, B1, B2 = BASE_MS, BASE_MS + MINUTE, BASE_MS + 2 * MINUTE
DECOMPOSABLE = tuple(Rollup(agg, MINUTE) for agg in ("avg", "sum", "count", "min", "max"))
SETTINGS = Settings(rollups=DECOMPOSABLE)
PATH = "/api/ingest/metrics/cpu/range"


@pytest.fixture
async def client(redis: Redis, redis_url: str) -> AsyncIterator[Client]:
    async with app_client(SETTINGS, redis_url) as c:
        yield c


async def get_range(client: Client, metric: str = "cpu", **params: Any) -> Any:
    response = await client.get(f"/api/ingest/metrics/{metric}/range", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def unequal_fleet(client: Client) -> None:
    """Device a: one sample 10; device b: three samples 20 (bucket B0), then a closing one."""
    await ingest(
        client,
        event("cpu", "a", 10.0, B0),
        event("cpu", "b", 20.0, B0 + 1_000),
        event("cpu", "b", 20.0, B0 + 2_000),
        event("cpu", "b", 20.0, B0 + 3_000),
    )


def values(body: Any) -> list[tuple[int, float]]:
    return [(p["timestampMs"], p["value"]) for p in body["points"]]


# --- one device ------------------------------------------------------------------------


async def test_raw_points_of_one_source_default_to_the_last_hour(client: Client) -> None:
    await ingest(client, event("cpu", "a", 1.0, B0), event("cpu", "a", 2.0, B0 + 5))

    body = await get_range(client, source="a")

    assert body["to"] - body["from"] == 3_600_000
    assert {k: v for k, v in body.items() if k not in ("from", "to")} == {
        "metric": "cpu",
        "source": "a",
        "agg": None,
        "bucketMs": None,
        "origin": "raw",
        "lastBucketOpen": False,
        "points": [{"timestampMs": B0, "value": 1.0}, {"timestampMs": B0 + 5, "value": 2.0}],
    }


async def test_times_may_be_epoch_ms_or_rfc3339(client: Client) -> None:
    await ingest(client, event("cpu", "a", 1.0, B0), event("cpu", "a", 2.0, B1))

    body = await get_range(client, source="a", **{"from": str(B1), "to": "2100-01-01T00:00:00Z"})

    assert values(body) == [(B1, 2.0)]
    assert body["from"] == B1


async def test_a_configured_rollup_serves_the_range_with_the_open_bucket_last(
    client: Client,
) -> None:
    await ingest(
        client,
        event("cpu", "a", 10.0, B0),
        event("cpu", "a", 20.0, B0 + 30_000),
        event("cpu", "a", 30.0, B1),  # closes B0; B1 stays open
    )

    body = await get_range(client, source="a", agg="avg")  # bucketMs: the first rollup's

    assert (body["origin"], body["bucketMs"], body["lastBucketOpen"]) == ("rollup", MINUTE, True)
    assert values(body) == [(B0, 15.0), (B1, 30.0)]


async def test_an_unconfigured_aggregation_is_computed_by_redis_from_raw(client: Client) -> None:
    await ingest(
        client,
        event("cpu", "a", 10.0, B0),
        event("cpu", "a", 20.0, B0 + 30_000),
        event("cpu", "a", 30.0, B1),
    )

    by_minute = await get_range(client, source="a", agg="range", bucketMs=MINUTE)
    by_two = await get_range(client, source="a", agg="avg", bucketMs=2 * MINUTE)

    assert (by_minute["origin"], values(by_minute)) == ("raw", [(B0, 10.0), (B1, 0.0)])
    assert by_two["origin"] == "raw"
    assert by_two["lastBucketOpen"] is True
    # Buckets start at multiples of the bucket, as a rollup rule's do.
    assert all(p["timestampMs"] % (2 * MINUTE) == 0 for p in by_two["points"])
    assert sum(p["value"] for p in by_two["points"]) > 0


async def test_a_bucket_closed_by_a_later_sample_is_not_open(client: Client) -> None:
    await ingest(client, event("cpu", "a", 10.0, B0), event("cpu", "a", 30.0, B1))

    body = await get_range(client, source="a", agg="avg", **{"from": str(B0), "to": str(B1 - 1)})

    assert values(body) == [(B0, 10.0)]
    assert body["lastBucketOpen"] is False


async def test_a_rollup_missing_on_an_older_series_falls_back_to_raw(
    redis: Redis, redis_url: str
) -> None:
    async with app_client(Settings(rollup_bucket_ms=MINUTE), redis_url) as old:
        await ingest(old, event("cpu", "a", 4.0, B0), event("cpu", "a", 6.0, B0 + 1))
    async with app_client(SETTINGS, redis_url) as new:
        body = await get_range(new, source="a", agg="sum", bucketMs=MINUTE)

    assert (body["origin"], values(body)) == ("raw", [(B0, 10.0)])


async def test_an_unknown_series_has_no_points(client: Client) -> None:
    raw = await get_range(client, metric="nothing", source="nobody")
    rolled = await get_range(client, metric="nothing", source="nobody", agg="avg")
    fleet = await get_range(client, metric="nothing", agg="avg")

    assert raw["points"] == rolled["points"] == fleet["points"] == []


# --- the fleet ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rollups", "origin"),
    [(DECOMPOSABLE, "rollup"), ((Rollup("avg", MINUTE),), "raw")],
    ids=["from-sum-and-count-rollups", "from-raw"],
)
async def test_fleet_average_is_the_mean_of_all_samples_not_of_device_means(
    redis: Redis, redis_url: str, rollups: tuple[Rollup, ...], origin: str
) -> None:
    async with app_client(Settings(rollups=rollups), redis_url) as client:
        await unequal_fleet(client)

        body = await get_range(client, agg="avg", bucketMs=MINUTE)

    assert body["source"] is None
    assert body["origin"] == origin
    assert values(body) == [(B0, 17.5)]  # (10 + 3 * 20) / 4, not (10 + 20) / 2
    assert body["lastBucketOpen"] is True


@pytest.mark.parametrize("from_rollups", [True, False])
@pytest.mark.parametrize(
    ("agg", "expected"),
    [("sum", 70.0), ("count", 4.0), ("min", 10.0), ("max", 20.0), ("range", 10.0)],
)
async def test_fleet_aggregations_combine_exactly(
    redis: Redis, redis_url: str, agg: str, expected: float, from_rollups: bool
) -> None:
    settings = SETTINGS if from_rollups else Settings(rollup_bucket_ms=MINUTE)
    async with app_client(settings, redis_url) as client:
        await unequal_fleet(client)

        body = await get_range(client, agg=agg, bucketMs=MINUTE)

    assert values(body) == [(B0, expected)]
    # range needs both a min and a max rollup: only configured in SETTINGS.
    assert body["origin"] == ("rollup" if from_rollups else "raw")


async def test_fleet_closed_and_open_buckets_from_rollups(client: Client) -> None:
    await unequal_fleet(client)
    await ingest(client, event("cpu", "a", 1.0, B1), event("cpu", "b", 3.0, B2))

    body = await get_range(client, agg="avg", bucketMs=MINUTE)

    # B0 closed for both; B1: only a (b skipped it); B2: b's open bucket.
    assert values(body) == [(B0, 17.5), (B1, 1.0), (B2, 3.0)]
    assert body["lastBucketOpen"] is True


@pytest.mark.parametrize("agg", ["first", "last", "std.p"])
async def test_fleet_aggregations_that_cannot_be_combined_need_a_source(
    client: Client, agg: str
) -> None:
    response = await client.get(PATH, params={"agg": agg})

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "agg"
    assert "source" in response.json()["detail"]


async def test_fleet_raw_points_name_their_source_in_time_order(client: Client) -> None:
    await unequal_fleet(client)

    body = await get_range(client)

    assert [(p["timestampMs"], p["source"]) for p in body["points"]] == [
        (B0, "a"),
        (B0 + 1_000, "b"),
        (B0 + 2_000, "b"),
        (B0 + 3_000, "b"),
    ]


async def test_the_fleet_never_reads_the_per_metric_series(client: Client, redis: Redis) -> None:
    await unequal_fleet(client)
    # Poison the per-metric series: a fleet answer built from it would show this value.
    await redis.execute_command(  # type: ignore[no-untyped-call]
        "TS.ADD", SETTINGS.keys.raw("cpu"), B0 + 10, 1_000_000
    )

    raw = await get_range(client)
    avg = await get_range(client, agg="max", bucketMs=MINUTE)

    assert 1_000_000 not in [p["value"] for p in raw["points"]]
    assert values(avg) == [(B0, 20.0)]


# --- limits and errors ---------------------------------------------------------------------


async def test_too_many_raw_points_is_422_naming_a_bucket_that_fits(
    redis: Redis, redis_url: str
) -> None:
    async with app_client(Settings(max_points=3), redis_url) as client:
        await ingest(client, *(event("cpu", "a", float(i), B0 + i) for i in range(4)))

        one = await client.get(PATH, params={"source": "a", "from": B0, "to": B0 + 999})
        fleet = await client.get(PATH, params={"from": B0, "to": B0 + 999})
        fits = await client.get(PATH, params={"source": "a", "from": B0, "to": B0 + 2})

    for response in (one, fleet):
        assert response.status_code == 422, response.text
        assert "bucketMs=334" in response.json()["detail"]  # ceil(1000 / 3)
    assert fits.status_code == 200
    assert len(fits.json()["points"]) == 3


async def test_too_many_buckets_is_422_and_the_named_bucket_fits(
    redis: Redis, redis_url: str
) -> None:
    async with app_client(Settings(max_points=10), redis_url) as client:
        window = {"from": B0, "to": B0 + 100_000}
        refused = await client.get(PATH, params={**window, "agg": "avg", "bucketMs": 1_000})
        detail = refused.json()["detail"]
        bucket = int(detail.split("bucketMs=")[1].split(" ")[0])
        fitting = await client.get(PATH, params={**window, "agg": "avg", "bucketMs": bucket})

    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "bucketMs"
    assert fitting.status_code == 200


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"bucketMs": 1000}, "bucketMs"),
        ({"agg": "avg", "bucketMs": 0}, "bucketMs"),
        ({"agg": "median"}, "agg"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-01T00:00:00Z"}, "to"),
        ({"from": 2_000, "to": 1_000}, "from"),
        ({"from": "-5"}, "from"),
        # Past 64 bits Redis cannot parse the bucket: this was a 500.
        ({"agg": "avg", "bucketMs": 10**20}, "bucketMs"),
        ({"to": "10000000000000"}, "to"),
    ],
    ids=repr,
)
async def test_bad_parameters_are_422_naming_the_field(
    client: Client, params: dict[str, Any], field: str
) -> None:
    response = await client.get(PATH, params=params)

    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]


async def test_aggregates_beyond_the_float_range_are_null_as_documented(client: Client) -> None:
    # Each sample is finite, their sum is not; JSON has no Infinity. Schemathesis found the
    # null where the schema said number (the schema now says number or null).
    await ingest(client, event("cpu", "a", 1.7e308, B0), event("cpu", "a", 1.7e308, B0 + 1_000))

    one = await get_range(client, source="a", agg="sum", bucketMs=MINUTE)
    fleet = await get_range(client, agg="avg", bucketMs=MINUTE)
    charts = await client.get("/api/ingest/charts", params={"window": "1h"})

    assert [(p["timestampMs"], p["value"]) for p in one["points"]] == [(B0, None)]
    assert [(p["timestampMs"], p["value"]) for p in fleet["points"]] == [(B0, None)]
    assert charts.status_code == 200
    assert None in [p["value"] for p in charts.json()["charts"][0]["raw"]]
    point = client.app.openapi_schema.to_schema()["components"]["schemas"]["RangePoint"]
    assert {"type": "null"} in point["properties"]["value"]["oneOf"]


async def test_a_bad_name_is_explained_in_words_not_as_a_regex(client: Client) -> None:
    # The pattern is in the OpenAPI document (as ECMA-262); the answer says it in words.
    response = await client.get("/api/ingest/metrics/a%20b/range", params={"source": "a,kind=x"})

    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "metric", "message": "must be 1\u2013128 characters: letters, digits, `_ . : -`"}
    ]
    source = await client.get(PATH, params={"source": "a,kind=x"})
    assert source.json()["errors"] == [
        {
            "field": "source",
            "message": "must be 1\u2013128 characters: letters, digits, `_ . : @ / -`",
        }
    ]


INJECTIONS = ["a,kind=x", "x)", "a b", "", "{", "*", "kind=raw", "a\n", "m" * 129]


@pytest.mark.parametrize("name", INJECTIONS, ids=repr)
async def test_injection_attempts_are_422_and_reach_no_redis_command(
    redis: Redis, redis_url: str, name: str
) -> None:
    async with recording_client(SETTINGS, redis_url) as client:
        RecordingConnection.reset()
        as_source = await client.get(PATH, params={"source": name})
        as_source_agg = await client.get(PATH, params={"source": name, "agg": "avg"})
        path = f"/api/ingest/metrics/{quote(name, safe='')}/range"
        as_metric = await client.get(path) if name else None
        sent = list(RecordingConnection.sent)

    for response in (as_source, as_source_agg, as_metric):
        if response is not None:
            assert response.status_code in (404, 422), response.text
    assert as_source.status_code == as_source_agg.status_code == 422
    if name:
        assert not any(name.encode() in command for command in sent if len(name) > 1)
