"""``INGEST_REDIS_MODE=auto``: ask Redis, once at an entry point, whether it is a cluster.

The settings stay the one frozen object passed down: the entry point replaces ``auto`` by what
it found. A Redis that cannot be asked at start counts as a single node, with a warning naming
the variable: should it be a cluster after all, its first MOVED stops the service with a line
saying to set ``INGEST_REDIS_MODE=cluster``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import redis
import structlog
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from ingest_shared.redis_client import cluster_disabled, is_cluster

if TYPE_CHECKING:
    from ingest_shared.settings import Settings

PROBE_TIMEOUT_S = 2.0
log = structlog.get_logger(__name__)


async def resolved(settings: Settings) -> Settings:
    """``settings`` with ``redis_mode`` auto replaced by ``cluster`` or ``standalone``."""
    if settings.redis_mode != "auto":
        return settings
    try:
        found = await is_cluster(
            settings.redis_url, connect_timeout=PROBE_TIMEOUT_S, tls=settings.redis_tls
        )
    except (RedisError, OSError) as exc:
        return _unknown(settings, exc)
    return replace(settings, redis_mode="cluster" if found else "standalone")


def resolved_sync(settings: Settings) -> Settings:
    """:func:`resolved` for an entry point that runs before an event loop."""
    if settings.redis_mode != "auto":
        return settings
    url = settings.redis_url
    tls = settings.redis_tls.redis_kwargs() if url.startswith("rediss://") else {}
    try:
        with redis.Redis.from_url(
            url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S, **tls
        ) as probe:
            found = _cluster_enabled(probe)
    except (RedisError, OSError) as exc:
        return _unknown(settings, exc)
    return replace(settings, redis_mode="cluster" if found else "standalone")


def _cluster_enabled(probe: redis.Redis) -> bool:
    """:func:`ingest_shared.redis_client.is_cluster`, blocking."""
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    except NoPermissionError:
        try:
            probe.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        except ResponseError as exc:
            if cluster_disabled(exc):
                return False
            raise
        return True


def _unknown(settings: Settings, error: BaseException) -> Settings:
    log.warning(
        "redis_mode_unknown",
        error=str(error),
        assumed="standalone",
        hint="Redis did not answer INFO cluster at start; set INGEST_REDIS_MODE to be sure",
    )
    return replace(settings, redis_mode="standalone")
