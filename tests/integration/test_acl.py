"""Each service under its least-privilege Redis user (``ingest_shared.acl``): everything it does
works, a command outside its role is refused, and a refusal is reported as NOPERM."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from ingest_producer.asgi import build_app
from ingest_shared.acl import DEFAULT_USERS, Role, setuser_command
from ingest_shared.exceptions import ConfigurationError
from ingest_shared.mode import resolved_sync
from ingest_shared.redis_client import call, create_redis, is_cluster
from ingest_shared.schema import format_ms, now_ms
from ingest_shared.settings import Settings
from ingest_worker.cli import runner_for
from ingest_worker.monitor import Heartbeat

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.conftest import AppClient, LocalRedisFactory

    from ingest_devtools.localcluster import LocalCluster

PASSWORD = "a-long-test-password-0123"
URL = "/api/ingest/events"
KEYS = Settings().keys


def url_for(server_url: str, role: Role) -> str:
    return server_url.replace("redis://", f"redis://{DEFAULT_USERS[role]}:{PASSWORD}@")


@pytest.fixture
async def server_url(local_redis_server: LocalRedisFactory) -> AsyncIterator[str]:
    """A private server with the three users, and its default user unable to do anything."""
    server = local_redis_server()
    async with Redis.from_url(server.url) as admin:
        for role in Role:
            args = setuser_command(role, PASSWORD, Settings().key_prefix).split()
            await call(admin, *args)
        yield server.url


@contextlib.asynccontextmanager
async def running_worker(url: str) -> AsyncIterator[None]:
    settings = replace(
        Settings(), redis_url=url, block_ms=50, claim_interval_ms=20, consumer_name="acl"
    )
    client = create_redis(url, socket_timeout=2.0)
    # The default layout, as the worker process runs it: shard ownership, one loop per shard.
    worker = runner_for(client, settings, Heartbeat())
    task = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        worker.stop()
        try:
            await asyncio.wait_for(task, 10)
        finally:
            await client.aclose()


async def until(check: object, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_producer_and_worker_do_everything_under_their_own_users(
    server_url: str, serve: AppClient
) -> None:
    producer = Settings(redis_url=url_for(server_url, Role.PRODUCER))
    base = now_ms() - 60_000
    events = [
        {"source": f"dev-{n % 3}", "metric": "cpu", "value": n, "occurredAt": format_ms(base + n)}
        for n in range(30)
    ]
    async with (
        serve(build_app(producer)) as http,
        running_worker(url_for(server_url, Role.WORKER)),
        Redis.from_url(server_url) as admin,
    ):
        assert (await http.post(URL, json=events)).status_code == 200
        # Something the worker must dead-letter (written by the admin, not the producer).
        await admin.xadd(KEYS.shards[0].stream, {"metric": "cpu", "value": "oops"})

        async def settled() -> bool:
            summary = (await http.get("/api/ingest/summary")).json()
            queue = summary["queue"]
            return bool(queue["pending"] == 0 and queue["dead_lettered"] == 1 and queue["lag"] == 0)

        await until(settled)
        ranged = await http.get("/api/ingest/metrics/cpu/range", params={"source": "dev-1"})
        assert ranged.status_code == 200
        assert len(ranged.json()["points"]) == 10
        for path in ("/api/ingest/metrics", "/api/ingest/sources", "/api/ingest/charts"):
            assert (await http.get(path)).status_code == 200, path
        letters = (await http.get("/api/ingest/dead-letters")).json()["deadLetters"]
        replay = await http.post(
            "/api/ingest/dead-letters/replay", json={"ids": [letters[0]["id"]]}
        )
        assert replay.status_code == 200
        assert replay.json()["still_invalid"][0]["id"] == letters[0]["id"]
        deleted = await http.delete(f"/api/ingest/dead-letters/{letters[0]['id']}")
        assert deleted.status_code == 200
        assert (await http.get("/ready")).status_code == 200


async def test_a_command_outside_each_role_is_refused(server_url: str) -> None:
    async with (
        Redis.from_url(url_for(server_url, Role.PRODUCER)) as producer,
        Redis.from_url(url_for(server_url, Role.WORKER)) as worker,
        Redis.from_url(url_for(server_url, Role.DASHBOARD)) as dashboard,
    ):
        with pytest.raises(NoPermissionError):
            await call(producer, "TS.MADD", KEYS.raw("cpu"), 1, 1.0)  # the worker's job
        with pytest.raises(NoPermissionError):
            await call(worker, "HSET", KEYS.stream + ":x", "field", "value")
        with pytest.raises(NoPermissionError):
            await call(dashboard, "XADD", KEYS.stream, "*", "metric", "cpu")
        with pytest.raises(NoPermissionError):  # a key outside the prefix
            await call(producer, "XLEN", "someone-else:stream")


async def test_refusals_are_reported_as_nopermission_never_as_a_bare_500(
    server_url: str, serve: AppClient
) -> None:
    # The dashboard user serves reads; writes are refused and say so.
    dashboard = Settings(redis_url=url_for(server_url, Role.DASHBOARD))
    async with serve(build_app(dashboard)) as http:
        summary = await http.get("/api/ingest/summary")
        assert summary.status_code == 200, summary.text
        ready = await http.get("/ready")
        assert ready.status_code == 200, ready.text
        refused = await http.post(URL, json={"source": "s", "metric": "cpu", "value": 1})
        assert refused.status_code == 503
        assert "NOPERM" in refused.json()["detail"]
    # The producer's user lacks the worker's commands: the process route names the one refused.
    producer = Settings(redis_url=url_for(server_url, Role.PRODUCER))
    async with serve(build_app(producer)) as http:
        process = await http.post("/api/ingest/workers/process", json={"consumer": "c", "count": 1})
        assert process.status_code == 503
        assert "xreadgroup" in process.json()["detail"].lower()


async def test_a_worker_without_timeseries_rights_is_told_so_not_no_timeseries(
    server_url: str,
) -> None:
    async with Redis.from_url(server_url) as admin:
        await call(admin, "ACL", "SETUSER", DEFAULT_USERS[Role.WORKER], "-ts.info")
    with pytest.raises(ConfigurationError, match=r"refused TS\.INFO"):
        async with running_worker(url_for(server_url, Role.WORKER)):
            await asyncio.sleep(5)


async def test_each_role_finds_a_single_node_without_info_rights(server_url: str) -> None:
    # INFO is outside every role: the mode probe falls back to CLUSTER SLOTS, which a single
    # node refuses as "cluster support disabled".
    for role in Role:
        url = url_for(server_url, role)
        async with Redis.from_url(url) as user:
            with pytest.raises(NoPermissionError):
                await user.info("cluster")
        assert await is_cluster(url, connect_timeout=5.0) is False
        assert resolved_sync(Settings(redis_url=url, redis_mode="auto")).redis_mode == "standalone"


async def test_a_user_without_info_rights_finds_the_cluster(redis_cluster: LocalCluster) -> None:
    for node_url in redis_cluster.urls:
        async with Redis.from_url(node_url) as admin:
            await call(
                admin, "ACL", "SETUSER", "probe", "on", f">{PASSWORD}", "-@all", "+cluster|slots"
            )
    try:
        url = redis_cluster.url.replace("redis://", f"redis://probe:{PASSWORD}@")
        assert await is_cluster(url, connect_timeout=5.0) is True
        assert resolved_sync(Settings(redis_url=url, redis_mode="auto")).redis_mode == "cluster"
    finally:
        for node_url in redis_cluster.urls:
            async with Redis.from_url(node_url) as admin:
                await call(admin, "ACL", "DELUSER", "probe")
