"""ASGI factory for uvicorn: ``uvicorn --factory ingest_producer.asgi:create_asgi_app``.

Each uvicorn worker process calls it once: it is that process's entry point, so it parses the
settings and configures logging; the Redis client it creates is closed by the app's lifespan.
"""

from __future__ import annotations

import os
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from ingest_producer.app import create_app
from ingest_shared.exceptions import ConfigurationError
from ingest_shared.logconfig import configure_logging
from ingest_shared.mode import resolved_sync
from ingest_shared.redis_client import create_redis
from ingest_shared.settings import load_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from litestar import Litestar

    from ingest_shared.settings import Settings

# Below the ~2 s clients may wait for a 503: a hanging Redis fails a request after this long.
REDIS_SOCKET_TIMEOUT_S = 1.5
REDIS_CONNECT_TIMEOUT_S = 1.0
# Set by the CLI for several processes (prometheus-client's own variable, read at its import).
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def create_asgi_app() -> Litestar:
    """Settings from the environment, logging, and the app (with its own Redis client)."""
    try:
        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        return build_app(settings, multiprocess_dir=os.environ.get(MULTIPROC_DIR_VARIABLE))
    except ConfigurationError as exc:
        print(f"ingest-producer: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def build_app(settings: Settings, multiprocess_dir: str | None = None) -> Litestar:
    """The app with a Redis client that lives exactly as long as the app does.

    ``INGEST_REDIS_MODE=auto`` is settled here, before the event loop runs: one ``INFO
    cluster`` tells a single node from a Redis Cluster.
    """
    settings = resolved_sync(settings)
    cluster = settings.redis_mode == "cluster"
    if cluster and settings.read_redis_url:
        msg = (
            "INGEST_READ_REDIS_URL names a replica of a single Redis node; a Redis Cluster "
            "spreads reads over its primaries already: unset it"
        )
        raise ConfigurationError(msg)
    redis = create_redis(
        settings.redis_url,
        # A durable write waits up to durability_timeout_ms inside Redis (WAITAOF/WAIT).
        socket_timeout=max(REDIS_SOCKET_TIMEOUT_S, settings.durability_timeout_ms / 1000 + 0.5),
        connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        tls=settings.redis_tls,
        cluster=cluster,
    )
    read_redis = None
    if settings.read_redis_url:
        read_redis = create_redis(
            settings.read_redis_url,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            tls=settings.redis_tls,
        )

    @asynccontextmanager
    async def close_redis(_: Litestar) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await redis.aclose()
            if read_redis is not None:
                await read_redis.aclose()

    return create_app(
        settings,
        redis,
        read_redis=read_redis,
        lifespan=[close_redis],
        multiprocess_dir=multiprocess_dir,
    )
