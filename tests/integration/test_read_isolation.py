"""Readers never slow ingest: identical reads in flight are computed once, answers are shared
by every producer process for INGEST_READ_CACHE_MS, heavy reads beyond
INGEST_READ_CONCURRENCY get a 503 with Retry-After (never ingest or health), and /sources pages.

Redis is held still with ``CLIENT PAUSE`` where a test needs reads to be in flight at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from tests.readside import BASE_MS, event, ingest

from ingest_producer.asgi import build_app
from ingest_producer.models import Point
from ingest_producer.reading.isolation import QUEUE_WAIT_S, ReadGuard
from ingest_shared.acl import DEFAULT_USERS, Role, setuser_command
from ingest_shared.exceptions import ReadsBusyError
from ingest_shared.redis_client import call
from ingest_shared.schema import now_ms
from ingest_shared.settings import Settings

if TYPE_CHECKING:
    import httpx
    from tests.conftest import AppClient, LocalRedisFactory

SETTINGS = Settings(stream_shards=1)
KEYS = SETTINGS.keys
SOURCES = "/api/ingest/sources"
CHARTS = "/api/ingest/charts"
# Long enough for every concurrent request of a test to reach Redis, well below the app's
# Redis socket timeout (1.5 s).
PAUSE_MS = 800


def settings(redis_url: str, **changes: Any) -> Settings:
    return dataclasses.replace(SETTINGS, redis_url=redis_url, **changes)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def calls(redis: Redis, command: str) -> int:
    """How many times Redis ran ``command`` so far (INFO commandstats)."""
    stats: dict[str, Any] = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def cache_keys(redis: Redis) -> list[bytes]:
    return sorted([key async for key in redis.scan_iter(match=f"{KEYS.prefix}read-cache:*")])


async def names(http: httpx.AsyncClient, **params: Any) -> tuple[list[str], str | None]:
    response = await http.get(SOURCES, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    return [s["source"] for s in body["sources"]], body["next"]


async def test_identical_queries_in_flight_are_computed_once(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    async with serve(build_app(settings(redis_url))) as http:
        await ingest(http, *(event("cpu", f"d{n}", n, BASE_MS + n) for n in range(5)))
        before = await calls(redis, "ts.mrange")
        alone = await http.get(CHARTS, params={"window": "24h"})
        per_answer = await calls(redis, "ts.mrange") - before
        joined = counter("ingest_producer_read_cache_total", route="charts", outcome="joined")

        await call(redis, "CLIENT", "PAUSE", PAUSE_MS, "ALL")
        answers = await asyncio.gather(
            *(http.get(CHARTS, params={"window": "24h"}) for _ in range(6))
        )

        assert [a.status_code for a in answers] == [200] * 6
        assert len({a.content for a in answers}) == 1
        assert answers[0].json()["charts"] == alone.json()["charts"]
        assert await calls(redis, "ts.mrange") - before == 2 * per_answer
        assert counter("ingest_producer_read_cache_total", route="charts", outcome="joined") == (
            joined + 5
        )


async def test_an_answer_is_shared_by_every_process_until_it_expires(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    cached = settings(redis_url, read_cache_ms=2_000)
    async with serve(build_app(cached)) as one, serve(build_app(cached)) as other:
        await ingest(one, event("cpu", "a", 1.0, BASE_MS))
        assert await names(one) == (["a"], None)
        await ingest(one, event("cpu", "b", 2.0, BASE_MS))
        mgets = await calls(redis, "ts.mget")
        hits = counter("ingest_producer_read_cache_total", route="sources", outcome="hit")

        # Another process answers from the cache: the device added since is not there yet.
        assert await names(other) == (["a"], None)
        assert await calls(redis, "ts.mget") == mgets
        assert counter("ingest_producer_read_cache_total", route="sources", outcome="hit") == (
            hits + 1
        )
        [key] = await cache_keys(redis)
        left_ms = await redis.pttl(key)
        assert 0 < left_ms <= 2_000

        await asyncio.sleep(left_ms / 1000 + 0.05)
        assert await names(other) == (["a", "b"], None)


async def test_the_cache_key_holds_every_parameter_that_changes_the_answer(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    async with serve(build_app(settings(redis_url, read_cache_ms=10_000))) as http:
        # Ten minutes old (stale with the five-minute limit), and fresh.
        await ingest(http, event("cpu", "a", 1.0, BASE_MS), event("cpu", "b", 1.0, now_ms()))
        assert await names(http) == (["a", "b"], None)
        assert await names(http, stale="true") == (["a"], None)
        assert await names(http, metric="mem") == ([], None)
        for window in ("1h", "24h"):
            charts = await http.get(CHARTS, params={"window": window})
            assert charts.json()["window"] == window
        # Label filters are ANDed: their order does not change the answer, nor the key.
        for labels in (["x=1", "y=2"], ["y=2", "x=1"]):
            assert await names(http, label=labels) == ([], None)

        assert len(await cache_keys(redis)) == 6


async def test_nothing_is_cached_when_the_cache_is_off(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    async with serve(build_app(settings(redis_url, read_cache_ms=0))) as http:
        await ingest(http, event("cpu", "a", 1.0, BASE_MS))
        assert await names(http) == (["a"], None)
        await ingest(http, event("cpu", "b", 1.0, BASE_MS))
        for path in (SOURCES, CHARTS, "/api/ingest/metrics", "/api/ingest/summary"):
            assert (await http.get(path)).status_code == 200, path

        assert await names(http) == (["a", "b"], None)
        assert await cache_keys(redis) == []


async def test_a_read_beyond_the_limit_gets_a_503_naming_it_and_ingest_never_waits(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    async with serve(build_app(settings(redis_url, read_concurrency=1))) as http:
        await ingest(http, event("cpu", "a", 1.0, BASE_MS))
        rejected = counter("ingest_producer_reads_rejected_total", route="charts")
        await call(redis, "CLIENT", "PAUSE", PAUSE_MS, "ALL")
        # Takes the only slot, and waits for Redis.
        first = asyncio.create_task(http.get("/api/ingest/metrics/cpu/range"))
        await asyncio.sleep(0.15)
        busy, health, posted = await asyncio.gather(
            http.get(CHARTS),
            http.get("/health"),
            http.post("/api/ingest/events", json=event("cpu", "a", 2.0, BASE_MS + 1)),
        )

        assert busy.status_code == 503
        assert busy.headers["Retry-After"] == "1"
        assert "INGEST_READ_CONCURRENCY=1" in busy.json()["detail"]
        assert counter("ingest_producer_reads_rejected_total", route="charts") == rejected + 1
        assert (health.status_code, posted.status_code) == (200, 200)
        assert (await first).status_code == 200
        # The slot is free again.
        assert (await http.get(CHARTS)).status_code == 200


async def test_a_read_waits_briefly_for_a_slot_before_it_is_refused(redis: Redis) -> None:
    guard = ReadGuard(redis, KEYS, concurrency=1, cache_ms=0)
    release = asyncio.Event()

    async def hold() -> None:
        await release.wait()

    async def quick() -> str:
        return "done"

    holder = asyncio.create_task(guard.limited("range", hold))
    await asyncio.sleep(0)
    with pytest.raises(ReadsBusyError):
        await guard.limited("range", quick)
    # Freed within the wait: served, not refused.
    waiting = asyncio.create_task(guard.limited("range", quick))
    await asyncio.sleep(QUEUE_WAIT_S / 4)
    release.set()
    assert await waiting == "done"
    await holder


async def test_a_client_that_leaves_does_not_cancel_a_shared_read(redis: Redis) -> None:
    guard = ReadGuard(redis, KEYS, concurrency=4, cache_ms=0)
    release = asyncio.Event()
    computed = 0

    async def read() -> Point:
        nonlocal computed
        computed += 1
        await release.wait()
        return Point(1, 2.0)

    leaving = asyncio.create_task(guard.shared("metrics", (), read))
    staying = asyncio.create_task(guard.shared("metrics", (), read))
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    release.set()

    assert await staying == b'{"timestampMs":1,"value":2.0}'
    assert leaving.cancelled()
    assert computed == 1


async def test_sources_are_paged_in_name_order_and_a_cursor_survives_new_devices(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    async with serve(build_app(settings(redis_url))) as http:
        await ingest(http, *(event("cpu", f"d{n}", n, BASE_MS) for n in range(7)))
        assert await names(http) == ([f"d{n}" for n in range(7)], None)

        first, cursor = await names(http, limit=3)
        assert first == ["d0", "d1", "d2"]
        # One device sorts before the cursor, one after: only the second is still to come.
        await ingest(http, event("cpu", "d1a", 1.0, BASE_MS), event("cpu", "d2a", 1.0, BASE_MS))
        second, cursor = await names(http, limit=3, cursor=cursor)
        third, end = await names(http, limit=3, cursor=cursor)

        assert (second, third, end) == (["d2a", "d3", "d4"], ["d5", "d6"], None)


@pytest.mark.parametrize(
    "params",
    [{"cursor": "zz"}, {"cursor": "abc"}, {"cursor": "AB"}, {"limit": "0"}, {"limit": "5001"}],
)
async def test_a_bad_cursor_or_limit_is_a_422_naming_it(
    redis: Redis, redis_url: str, serve: AppClient, params: dict[str, str]
) -> None:
    async with serve(build_app(settings(redis_url))) as http:
        response = await http.get(SOURCES, params=params)

    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["field"] == next(iter(params))


async def test_the_document_names_the_read_limit_on_the_bounded_routes_only(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    async with serve(build_app(settings(redis_url))) as http:
        paths = (await http.get("/schema/openapi.json")).json()["paths"]

    def busy_503(path: str, method: str = "get") -> bool:
        return "INGEST_READ_CONCURRENCY" in paths[path][method]["responses"]["503"]["description"]

    bounded = [
        "/api/ingest/summary",
        "/api/ingest/metrics",
        "/api/ingest/metrics/{metric}/range",
        "/api/ingest/charts",
        "/api/ingest/sources",
        "/api/ingest/dead-letters",
    ]
    assert all(busy_503(path) for path in bounded)
    assert not busy_503("/api/ingest/events", "post")
    assert not busy_503("/ready")
    ok = paths["/api/ingest/sources"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"] == {"$ref": "#/components/schemas/SourceList"}


async def test_a_redis_user_that_may_not_write_reads_without_the_cache(
    local_redis_server: LocalRedisFactory, serve: AppClient
) -> None:
    server = local_redis_server()
    password = "a-long-test-password-0123"
    async with Redis.from_url(server.url) as admin:
        for role in (Role.PRODUCER, Role.DASHBOARD):
            await call(admin, *setuser_command(role, password, KEYS.prefix).split())

        async def read_as(role: Role) -> list[bytes]:
            url = server.url.replace("redis://", f"redis://{DEFAULT_USERS[role]}:{password}@")
            async with serve(build_app(settings(url, read_cache_ms=5_000))) as http:
                for _ in range(2):
                    assert (await http.get(SOURCES)).status_code == 200
            return sorted([key async for key in admin.scan_iter(match="*read-cache:*")])

        assert await read_as(Role.DASHBOARD) == []
        assert len(await read_as(Role.PRODUCER)) == 1


async def test_a_process_serves_its_own_copy_without_asking_redis_again(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    async with serve(build_app(settings(redis_url, read_cache_ms=5_000))) as http:
        await ingest(http, event("cpu", "a", 1.0, BASE_MS))
        assert (await http.get(CHARTS, params={"window": "1h"})).status_code == 200
        gets, mranges = await calls(redis, "get"), await calls(redis, "ts.mrange")
        for _ in range(5):
            assert (await http.get(CHARTS, params={"window": "1h"})).status_code == 200
        assert await calls(redis, "get") == gets
        assert await calls(redis, "ts.mrange") == mranges


async def test_a_relative_range_is_one_query_and_a_long_window_lives_longer(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    async with serve(build_app(settings(redis_url, read_cache_ms=1_000))) as http:
        await ingest(http, event("cpu", "a", 1.0, BASE_MS))
        day: dict[str, str | int] = {
            "from": now_ms() - 86_400_000,
            "agg": "avg",
            "bucketMs": 3_600_000,
        }
        assert (await http.get("/api/ingest/metrics/cpu/range", params=day)).status_code == 200
        hour = await http.get("/api/ingest/metrics/cpu/range")  # the last hour, relative
        assert hour.status_code == 200, hour.text
        reads = await calls(redis, "ts.range") + await calls(redis, "ts.mrange")
        again = await http.get("/api/ingest/metrics/cpu/range")
        assert again.json() == hour.json()
        assert await calls(redis, "ts.range") + await calls(redis, "ts.mrange") == reads
        lifetimes = sorted([await redis.pttl(key) for key in await cache_keys(redis)])
    # An hour: INGEST_READ_CACHE_MS or a 2,880th of it, 1.25 s; a day: 30 s.
    assert len(lifetimes) == 2
    assert 0 < lifetimes[0] <= 1_250
    assert 25_000 < lifetimes[1] <= 30_000


async def test_reads_start_at_the_paced_rate_and_one_too_far_ahead_is_a_503(
    redis: Redis,
) -> None:
    guard = ReadGuard(redis, KEYS, concurrency=4, cache_ms=0, rate=1)
    started = asyncio.get_running_loop().time()
    waiting = [asyncio.create_task(guard.paced("summary")) for _ in range(3)]
    await asyncio.sleep(0)
    # Turns at 0, 1 and 2 s: a fourth would be 3 s away, past the 2 s a read may wait.
    with pytest.raises(ReadsBusyError, match="INGEST_READ_RATE=1 a second"):
        await guard.paced("summary")
    await waiting[1]
    assert asyncio.get_running_loop().time() - started >= 0.9
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_a_chart_is_served_again_for_one_of_its_fine_buckets(
    redis: Redis, redis_url: str, serve: AppClient
) -> None:
    async with serve(build_app(settings(redis_url, read_cache_ms=1_000))) as http:
        await ingest(http, event("cpu", "a", 1.0, BASE_MS))
        assert (await http.get(CHARTS, params={"window": "1h"})).status_code == 200
        [key] = await cache_keys(redis)
    # An hour's chart has 15 s points: its answer lives 15 s, not INGEST_READ_CACHE_MS.
    assert 10_000 < await redis.pttl(key) <= 15_000
