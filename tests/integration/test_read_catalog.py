"""GET /api/ingest/metrics, /sources and /charts: shapes, limits, staleness, round trips."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis
from tests.readside import BASE_MS, RecordingConnection, app_client, event, ingest

from ingest_producer.reading import catalog, charts
from ingest_producer.reading.context import create_read_context
from ingest_shared.keys import Rollup
from ingest_shared.schema import now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from tests.readside import Client

MINUTE = 60_000
SETTINGS = Settings(rollups=(Rollup("avg", MINUTE), Rollup("max", MINUTE)))


@pytest.fixture
async def client(redis: Redis, redis_url: str) -> AsyncIterator[Client]:
    async with app_client(SETTINGS, redis_url) as c:
        yield c


async def get_json(client: Client, path: str, **params: Any) -> Any:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


# --- /metrics ----------------------------------------------------------------------------


async def test_metrics_list_sources_latest_raw_and_each_rollup(client: Client) -> None:
    await ingest(
        client,
        event("mem", "b", 3.0, BASE_MS),
        event("cpu", "a", 1.0, BASE_MS),
        event("cpu", "b", 5.0, BASE_MS + 1),
        event("cpu", "a", 2.0, BASE_MS + MINUTE),  # closes a's first minute
    )

    body = await get_json(client, "/api/ingest/metrics")

    assert body == {
        "metrics": [
            {
                "metric": "cpu",
                "sourceCount": 2,
                "sources": ["a", "b"],
                "latest": {"timestampMs": BASE_MS + MINUTE, "value": 2.0},
                # The per-metric series: its first minute held 1.0 and 5.0.
                "rollups": {
                    "avg_60000": {"timestampMs": BASE_MS, "value": 3.0},
                    "max_60000": {"timestampMs": BASE_MS, "value": 5.0},
                },
            },
            {
                "metric": "mem",
                "sourceCount": 1,
                "sources": ["b"],
                "latest": {"timestampMs": BASE_MS, "value": 3.0},
                "rollups": {"avg_60000": None, "max_60000": None},
            },
        ]
    }


async def test_metrics_list_sources_only_when_there_are_at_most_fifty(client: Client) -> None:
    await ingest(client, *(event("cpu", f"s{i:02d}", 1.0, BASE_MS) for i in range(51)))
    await ingest(client, *(event("mem", f"s{i:02d}", 1.0, BASE_MS) for i in range(50)))

    body = await get_json(client, "/api/ingest/metrics")

    cpu, mem = body["metrics"]
    assert (cpu["sourceCount"], cpu["sources"]) == (51, None)
    assert (mem["sourceCount"], len(mem["sources"])) == (50, 50)


async def test_metrics_of_an_empty_redis(client: Client) -> None:
    assert await get_json(client, "/api/ingest/metrics") == {"metrics": []}


# --- /sources ----------------------------------------------------------------------------


async def test_sources_list_each_device_with_its_latest_sample_per_metric(client: Client) -> None:
    recent = now_ms() - 1_000
    await ingest(
        client,
        event("cpu", "b", 1.0, recent),
        event("cpu", "a", 2.0, BASE_MS),  # ten minutes ago: stale after 5
        event("mem", "a", 3.0, recent),
    )

    body = await get_json(client, "/api/ingest/sources")

    assert body["staleAfterMs"] == 300_000
    assert abs(body["now"] - now_ms()) < 10_000
    assert body["sources"] == [
        {
            "source": "a",
            "stale": True,
            "metrics": [
                {"metric": "cpu", "timestampMs": BASE_MS, "value": 2.0, "stale": True},
                {"metric": "mem", "timestampMs": recent, "value": 3.0, "stale": False},
            ],
        },
        {
            "source": "b",
            "stale": False,
            "metrics": [{"metric": "cpu", "timestampMs": recent, "value": 1.0, "stale": False}],
        },
    ]
    stale = await get_json(client, "/api/ingest/sources", stale="true")
    assert [(s["source"], [m["metric"] for m in s["metrics"]]) for s in stale["sources"]] == [
        ("a", ["cpu"])
    ]
    mem = await get_json(client, "/api/ingest/sources", metric="mem")
    assert [(s["source"], len(s["metrics"])) for s in mem["sources"]] == [("a", 1)]


async def test_staleness_follows_the_setting(redis: Redis, redis_url: str) -> None:
    async with app_client(Settings(stale_after_ms=3_600_000), redis_url) as client:
        await ingest(client, event("cpu", "a", 2.0, BASE_MS))
        body = await get_json(client, "/api/ingest/sources", stale="true")
    assert body == {"staleAfterMs": 3_600_000, "now": body["now"], "sources": [], "next": None}


@pytest.mark.parametrize("params", [{"metric": "a,kind=x"}, {"metric": ""}, {"stale": "maybe"}])
async def test_sources_reject_bad_parameters(client: Client, params: dict[str, str]) -> None:
    response = await client.get("/api/ingest/sources", params=params)
    assert response.status_code == 422


# --- /charts -----------------------------------------------------------------------------


async def test_fleet_charts_have_the_true_average_and_the_first_rollup(client: Client) -> None:
    start = (now_ms() - 30 * MINUTE) // MINUTE * MINUTE
    await ingest(
        client,
        event("cpu", "a", 10.0, start),
        *(event("cpu", "b", 20.0, start + i) for i in range(1, 4)),
        event("cpu", "a", 0.0, start + MINUTE),
        event("mem", "a", 1.0, start),
    )

    body = await get_json(client, "/api/ingest/charts", window="1h")

    assert (body["window"], body["source"], body["rollup"]) == ("1h", None, "avg_60000")
    assert body["to"] - body["from"] == 3_600_000
    cpu, mem = body["charts"]
    assert (cpu["metric"], mem["metric"]) == ("cpu", "mem")
    assert cpu["rawBucketMs"] == 15_000  # 1 h / 240
    assert cpu["raw"][0] == {"timestampMs": start, "value": 17.5}
    assert cpu["rollup"] == [
        {"timestampMs": start, "value": 17.5},
        {"timestampMs": start + MINUTE, "value": 0.0},
    ]
    assert cpu["lastBucketOpen"] is True


async def test_device_charts_are_raw_samples_until_there_are_too_many(client: Client) -> None:
    start = (now_ms() - 10 * MINUTE) // MINUTE * MINUTE
    await ingest(
        client,
        *(event("cpu", "a", float(i % 2), start + i * 1_000) for i in range(301)),
        *(event("mem", "a", 5.0, start + i * 1_000) for i in range(3)),
        event("cpu", "b", 99.0, start),
    )

    body = await get_json(client, "/api/ingest/charts", window="15m", source="a")

    cpu, mem = body["charts"]
    assert cpu["rawBucketMs"] == 4_000  # 15 min / 240 = 3.75 s, rounded up
    assert len(cpu["raw"]) <= 241
    assert 99.0 not in [p["value"] for p in cpu["raw"]]
    assert mem["rawBucketMs"] is None
    assert [p["value"] for p in mem["raw"]] == [5.0, 5.0, 5.0]
    assert mem["rollup"] == [{"timestampMs": start, "value": 5.0}]  # the open bucket
    assert mem["lastBucketOpen"] is True


@pytest.mark.parametrize("params", [{"window": "2h"}, {"source": "x)"}, {"source": ""}])
async def test_charts_reject_bad_parameters(client: Client, params: dict[str, str]) -> None:
    response = await client.get("/api/ingest/charts", params=params)
    assert response.status_code == 422


# --- round trips ---------------------------------------------------------------------------


def first_command(packed: bytes) -> bytes:
    """The name of the first command of one packed RESP write (a command or a pipeline)."""
    return packed.split(b"\r\n", 3)[2].upper()


async def writes_for(
    redis_url: str, read: Callable[[Any], Awaitable[object]], settings: Settings = SETTINGS
) -> int:
    counting = Redis.from_url(redis_url, connection_class=RecordingConnection)
    try:
        await counting.ping()  # connect first: the handshake is not the read's
        RecordingConnection.reset()
        await read(create_read_context(settings, counting))
        # Round trips of the read itself, not the handshake of a new pooled connection: told
        # apart by the first command's name (SELECTED_LABELS contains "SELECT").
        handshake = {b"HELLO", b"CLIENT", b"AUTH", b"SELECT"}
        return sum(first_command(c) not in handshake for c in RecordingConnection.sent)
    finally:
        await counting.aclose()


@pytest.mark.parametrize(
    ("read", "writes"),
    [
        (lambda ctx: charts.read_charts(ctx, "1h", None), 1),
        (lambda ctx: charts.read_charts(ctx, "24h", "s1"), 1),
        # SMEMBERS, the devices and the metrics' latest values at once, then the closed
        # buckets merged across the metrics' partials: two round trips in sequence.
        (catalog.read_metrics, 4),
        (lambda ctx: catalog.read_sources(ctx, None, False), 1),
    ],
    ids=["charts-fleet", "charts-device", "metrics", "sources"],
)
async def test_round_trips_do_not_grow_with_the_number_of_metrics(
    client: Client,
    redis: Redis,
    redis_url: str,
    read: Callable[[Any], Awaitable[object]],
    writes: int,
) -> None:
    start = (now_ms() - 10 * MINUTE) // MINUTE * MINUTE
    # Two minutes per metric: every metric has a closed bucket to merge.
    few_events = [
        event(f"m{i}", f"s{i % 2}", 1.0, start + m * MINUTE) for i in range(2) for m in (0, 1)
    ]
    await ingest(client, *few_events)
    few = await writes_for(redis_url, read)
    many_events = [
        event(f"m{i}", f"s{i % 2}", 1.0, start + m * MINUTE) for i in range(20) for m in (0, 1)
    ]
    await ingest(client, *many_events)
    many = await writes_for(redis_url, read)

    assert few == many == writes
