"""The producer's other routes: process, summary, recent events, health, readiness, OpenAPI."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Connection, Redis

from ingest_producer.app import create_app
from ingest_producer.asgi import build_app
from ingest_shared import keys as k
from ingest_shared.redis_client import call
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


# One stream (the unsharded layout, names of the releases before sharding): these tests
# write to and read from it directly. test_read_partials covers several shards.
SETTINGS = Settings(rollup_bucket_ms=1_000, stream_shards=1)
KEYS = SETTINGS.keys
[SHARD] = KEYS.shards
STREAM, GROUP = SETTINGS.stream_key, SETTINGS.consumer_group
# A minute ago, on a bucket boundary: inside retention and clock skew.
BASE_MS = (now_ms() - 60_000) // 1_000 * 1_000

Client = AsyncTestClient[Litestar]


@pytest.fixture
async def client(redis: Redis, redis_url: str) -> AsyncIterator[Client]:
    async with AsyncTestClient(build_app(dataclasses.replace(SETTINGS, redis_url=redis_url))) as c:
        yield c


async def post_event(
    client: Client, metric: str = "cpu", source: str = "sensor-a", value: float = 1.0, at: int = 0
) -> str:
    body = {
        "source": source,
        "metric": metric,
        "value": value,
        "occurredAt": format_ms(at or BASE_MS),
    }
    response = await client.post("/api/ingest/events", json=body)
    assert response.status_code == 200, response.text
    entry_id: str = response.json()["id"]
    return entry_id


async def process(client: Client, count: int = 100, consumer: str = "w1") -> Any:
    response = await client.post(
        "/api/ingest/workers/process", json={"consumer": consumer, "count": count}
    )
    assert response.status_code == 200, response.text
    return response.json()


# --- POST /api/ingest/workers/process -----------------------------------------------------


async def test_process_stores_valid_entries_dead_letters_garbage_and_acks_all(
    client: Client, redis: Redis
) -> None:
    await post_event(client, value=1.5, at=BASE_MS)
    await post_event(client, value=2.5, at=BASE_MS + 10)
    await redis.xadd(STREAM, {b"metric": b"cpu", b"value": b"not a number"})

    result = await process(client)

    assert result == {"read": 3, "processed": 2, "dead_lettered": 1, "acked": 3}
    samples = await call(redis, "TS.RANGE", KEYS.metric_raw("cpu", SHARD), "-", "+")
    assert [(int(ts), float(v)) for ts, v in samples] == [(BASE_MS, 1.5), (BASE_MS + 10, 2.5)]
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
    assert await redis.xlen(KEYS.dead_letter) == 1


async def test_process_reads_at_most_count_new_entries(client: Client, redis: Redis) -> None:
    for i in range(5):
        await post_event(client, at=BASE_MS + i)

    first = await process(client, count=2)
    rest = await process(client, count=10)
    nothing = await process(client, count=10)

    assert (first["read"], rest["read"], nothing["read"]) == (2, 3, 0)
    assert nothing == {"read": 0, "processed": 0, "dead_lettered": 0, "acked": 0}


async def test_process_leaves_no_consumer_behind_whatever_names_callers_invent(
    client: Client, redis: Redis
) -> None:
    await post_event(client)
    for n in range(20):
        await process(client, consumer=f"made-up-{n}")

    assert await redis.xinfo_consumers(STREAM, GROUP) == []


async def test_process_recreates_a_deleted_group(client: Client, redis: Redis) -> None:
    await redis.delete(STREAM)
    await redis.xadd(STREAM, {k.FIELD_SOURCE: b"s", k.FIELD_METRIC: b"cpu", k.FIELD_VALUE: b"3"})

    result = await process(client)

    assert result["processed"] == 1


@pytest.mark.parametrize(
    "body",
    [
        {"consumer": "worker 1", "count": 10},
        {"consumer": "worker-1\n", "count": 10},
        {"consumer": "", "count": 10},
        {"consumer": "w" * 129, "count": 10},
        {"consumer": "worker-1", "count": 0},
        {"consumer": "worker-1", "count": 10_001},
        {"consumer": "worker-1", "count": "10"},
        {"consumer": "worker-1", "count": 10.5},
        {"count": 10},
    ],
    ids=repr,
)
async def test_process_rejects_an_invalid_request_with_422(
    client: Client, redis: Redis, body: dict[str, object]
) -> None:
    await post_event(client)

    response = await client.post("/api/ingest/workers/process", json=body)

    assert response.status_code == 422
    assert response.json()["errors"]
    assert (await redis.xpending(STREAM, GROUP))["pending"] == 0
    assert await redis.exists(KEYS.metric_raw("cpu", SHARD)) == 0


async def test_process_accepts_the_largest_count(client: Client) -> None:
    assert (await process(client, count=10_000, consumer="a.b:c@d/e_f-1"))["read"] == 0


async def test_process_accepts_an_integral_count_written_as_a_float(client: Client) -> None:
    # JSON Schema (and the OpenAPI document) calls 482.0 an integer; it was a 422.
    await post_event(client)

    response = await client.post(
        "/api/ingest/workers/process", json={"consumer": "w1", "count": 482.0}
    )

    assert response.status_code == 200, response.text
    assert response.json()["processed"] == 1


# --- GET /api/ingest/summary --------------------------------------------------------------


async def test_summary_of_an_empty_redis_is_zeros_without_stream_or_group(
    client: Client, redis: Redis
) -> None:
    await redis.flushall()

    response = await client.get("/api/ingest/summary")

    assert response.status_code == 200
    body = response.json()
    # The backlog monitor may have recreated the (empty) group meanwhile: lag 0, not null.
    assert body["queue"].pop("lag") in (None, 0)
    assert body == {
        "queue": {
            "total": 0,
            "pending": 0,
            "dead_lettered": 0,
            "added": 0,
            "oldestPendingAgeMs": None,
            "consumers": [],
        },
        "metrics": [],
        "cardinality": {"series": 0, "maxSeries": 100_000, "metrics": 0, "maxMetrics": 5_000},
    }


async def test_summary_counts_total_pending_and_dead_lettered_entries(
    client: Client, redis: Redis
) -> None:
    for i in range(5):
        await post_event(client, at=BASE_MS + i)
    # Two entries delivered and never acknowledged, by two consumers.
    await redis.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=1)
    await redis.xreadgroup(GROUP, "c2", {STREAM: ">"}, count=1)
    await redis.xadd(KEYS.dead_letter, {"reason": "test"})

    response = await client.get("/api/ingest/summary")

    queue = response.json()["queue"]
    assert {k: queue[k] for k in ("total", "pending", "dead_lettered", "added", "lag")} == {
        "total": 5,
        "pending": 2,
        "dead_lettered": 1,
        "added": 5,
        "lag": 3,
    }
    assert [(c["name"], c["pending"]) for c in queue["consumers"]] == [("c1", 1), ("c2", 1)]


async def test_summary_lists_metrics_sorted_with_latest_raw_and_closed_rollup(
    client: Client,
) -> None:
    await post_event(client, metric="mem", value=10.0, at=BASE_MS)
    await post_event(client, metric="cpu", value=1.0, at=BASE_MS)
    await post_event(client, metric="cpu", value=3.0, at=BASE_MS + 500)
    await process(client)
    # A sample in the next bucket closes the first one: its rollup (avg) appears.
    await post_event(client, metric="cpu", value=7.0, at=BASE_MS + 1_000)
    await process(client)

    response = await client.get("/api/ingest/summary")

    assert response.status_code == 200
    assert response.json()["metrics"] == [
        {
            "metric": "cpu",
            "raw": {"timestampMs": BASE_MS + 1_000, "value": 7.0},
            "rollup": {"timestampMs": BASE_MS, "value": 2.0},
            "rollups": {"avg_1000": {"timestampMs": BASE_MS, "value": 2.0}},
        },
        {
            "metric": "mem",
            "raw": {"timestampMs": BASE_MS, "value": 10.0},
            "rollup": None,
            "rollups": {"avg_1000": None},
        },
    ]


async def test_summary_shows_null_for_a_metric_whose_series_is_gone(
    client: Client, redis: Redis
) -> None:
    await redis.sadd(KEYS.metrics, "ghost")

    response = await client.get("/api/ingest/summary")

    assert response.json()["metrics"] == [
        {"metric": "ghost", "raw": None, "rollup": None, "rollups": {"avg_1000": None}}
    ]


class CountingConnection(Connection):
    """Counts writes to the socket: one per command, or one per pipeline."""

    writes = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).writes += 1
        await super().send_packed_command(command, check_health)


@pytest.mark.parametrize("metrics", [1, 25])
async def test_summary_takes_two_round_trips_whatever_the_number_of_metrics(
    client: Client, redis: Redis, redis_url: str, metrics: int
) -> None:
    for i in range(metrics):
        await post_event(client, metric=f"m{i}", at=BASE_MS)
        await post_event(client, metric=f"m{i}", at=BASE_MS + 1_000)  # closes bucket BASE_MS
    await process(client)
    counting = Redis.from_url(redis_url, connection_class=CountingConnection)

    @contextlib.asynccontextmanager
    async def close_counting(_: Litestar) -> AsyncIterator[None]:
        # The test client runs the app on its own event loop: the client is closed there.
        yield
        await counting.aclose()

    async with AsyncTestClient(create_app(SETTINGS, counting, lifespan=[close_counting])) as own:
        await own.get("/api/ingest/summary")  # opens the pooled connections (handshakes)
        CountingConnection.writes = 0
        response = await own.get("/api/ingest/summary")

    found = response.json()["metrics"]
    assert len(found) == metrics
    assert all(m["rollup"] == {"timestampMs": BASE_MS, "value": 1.0} for m in found)
    # Three pipelines, the first two at the same time: the queue; every metric's newest
    # samples and closed buckets; the closed buckets merged across partials.
    assert CountingConnection.writes == 3


# --- GET /api/ingest/events/recent ---------------------------------------------------------


async def test_recent_lists_the_newest_entries_first(client: Client) -> None:
    ids = [await post_event(client, value=float(i), at=BASE_MS + i) for i in range(5)]

    response = await client.get("/api/ingest/events/recent", params={"count": 3})

    assert response.status_code == 200
    entries = response.json()
    assert [e["id"] for e in entries] == ids[:1:-1]
    assert entries[0]["value"] == {
        "source": "sensor-a",
        "metric": "cpu",
        "value": 4.0,
        "occurredAt": format_ms(BASE_MS + 4),
    }


async def test_recent_defaults_to_twenty_entries(client: Client) -> None:
    for i in range(25):
        await post_event(client, at=BASE_MS + i)

    response = await client.get("/api/ingest/events/recent")

    assert len(response.json()) == 20


async def test_recent_shows_garbage_entries_as_strings(client: Client, redis: Redis) -> None:
    await redis.xadd(STREAM, {b"value": b"NaN", b"\xff": b"\xfe\x00", b"metric": b"cpu"})
    await redis.xadd(STREAM, {b"value": b"inf"})

    response = await client.get("/api/ingest/events/recent")

    assert response.status_code == 200
    assert [e["value"] for e in response.json()] == [
        {"value": "inf"},
        {"value": "NaN", "\ufffd": "\ufffd\x00", "metric": "cpu"},
    ]


async def test_recent_of_a_missing_stream_is_empty(client: Client, redis: Redis) -> None:
    await redis.delete(STREAM)
    response = await client.get("/api/ingest/events/recent")
    assert (response.status_code, response.json()) == (200, [])


@pytest.mark.parametrize("count", ["0", "1001", "-1", "many"])
async def test_recent_rejects_a_count_outside_1_to_1000_with_422(
    client: Client, count: str
) -> None:
    response = await client.get("/api/ingest/events/recent", params={"count": count})

    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["count"]


# --- health, readiness, OpenAPI ----------------------------------------------------------


async def test_health_and_ready_are_ok_with_redis_up(client: Client) -> None:
    health = await client.get("/health")
    ready = await client.get("/ready")

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (
        200,
        {"status": "ok", "backlog": 0, "overloaded": False},
    )


async def test_ready_is_503_naming_the_reason_when_timeseries_is_unusable(
    redis: Redis, redis_url: str
) -> None:
    # A user that may do everything but TS.INFO: to the probe, a Redis without TimeSeries.
    await redis.acl_setuser(
        "no-ts", enabled=True, passwords=["+secret"], keys=["*"], commands=["+@all", "-ts.info"]
    )
    url = redis_url.replace("redis://", "redis://no-ts:secret@", 1)
    try:
        async with AsyncTestClient(build_app(dataclasses.replace(SETTINGS, redis_url=url))) as c:
            ready = await c.get("/ready")
            health = await c.get("/health")
    finally:
        await redis.acl_deluser("no-ts")

    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert "TimeSeries" in ready.json()["reason"]
    assert health.status_code == 200


async def test_openapi_documents_every_route_body_and_error_shape(client: Client) -> None:
    response = await client.get("/schema/openapi.json")

    assert response.status_code == 200
    spec = response.json()
    paths = spec["paths"]
    assert {(path, method) for path, item in paths.items() for method in item} == {
        ("/api/ingest/events", "post"),
        ("/api/ingest/workers/process", "post"),
        ("/api/ingest/summary", "get"),
        ("/api/ingest/events/recent", "get"),
        ("/api/ingest/access", "get"),
        ("/api/ingest/metrics", "get"),
        ("/api/ingest/metrics/{metric}/range", "get"),
        ("/api/ingest/charts", "get"),
        ("/api/ingest/sources", "get"),
        ("/api/ingest/dead-letters", "get"),
        ("/api/ingest/dead-letters", "delete"),
        ("/api/ingest/dead-letters/replay", "post"),
        ("/api/ingest/dead-letters/{letter_id}", "delete"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
    }
    event = paths["/api/ingest/events"]["post"]
    # One event or a batch of them (test_producer_batches checks the batch side).
    schema = event["requestBody"]["content"]["application/json"]["schema"]["oneOf"][0]
    assert set(schema["properties"]) == {"source", "metric", "value", "occurredAt", "labels"}
    assert schema["required"] == ["source", "metric", "value"]
    for code in ("400", "413", "415", "422", "503"):
        assert event["responses"][code]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }
    process_body = paths["/api/ingest/workers/process"]["post"]["requestBody"]
    assert set(process_body["content"]["application/json"]["schema"]["properties"]) == {
        "consumer",
        "count",
    }
    recent = paths["/api/ingest/events/recent"]["get"]
    assert "400" not in recent["responses"]
    assert "422" in recent["responses"]
    assert set(spec["components"]["schemas"]["ErrorBody"]["properties"]) == {
        "status_code",
        "detail",
        "errors",
    }
