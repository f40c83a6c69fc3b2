"""The read replica (``INGEST_READ_REDIS_URL``): how far it is behind the primary.

The read side's heavy queries (ranges, charts, sources, the summary) can go to a replica, so
a long ``TS.MRANGE`` never holds the primary's single thread while writes wait behind it.
Answers from a replica may be a little behind; this monitor samples by how much every
:data:`REFRESH_INTERVAL_S` (``INFO replication`` on both servers: the primary's replication
offset minus the replica's, and the replica's link state) and exports it on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog

from ingest_producer import metrics
from ingest_producer.polling import polling
from ingest_shared.redis_client import call
from ingest_shared.streams import is_transient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.exceptions import RedisError

    from ingest_shared.redis_client import RedisClient

REFRESH_INTERVAL_S = 2.0

logger = structlog.get_logger(__name__)


class ReplicaMonitor:
    """Samples the replica's lag behind the primary for the life of :meth:`running`."""

    def __init__(self, primary: RedisClient, replica: RedisClient) -> None:
        self._primary = primary
        self._replica = replica
        self.lag_bytes: int | None = None
        self.link_up = False

    async def refresh(self) -> None:
        """One sample: both servers' ``INFO replication``."""
        primary, replica = await asyncio.gather(
            call(self._primary, "INFO", "replication"), call(self._replica, "INFO", "replication")
        )
        mine, theirs = _fields(primary), _fields(replica)
        self.link_up = theirs.get("master_link_status") == "up"
        offset, replicated = mine.get("master_repl_offset"), theirs.get("slave_repl_offset")
        self.lag_bytes = (
            max(0, int(offset) - int(replicated))
            if offset is not None and replicated is not None
            else None
        )
        metrics.READ_REPLICA_LINK_UP.set(1 if self.link_up else 0)
        if self.lag_bytes is not None:
            metrics.READ_REPLICA_LAG_BYTES.set(self.lag_bytes)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ReplicaMonitor]:
        """Refresh in a background task for the life of the block."""
        async with polling(self.refresh, REFRESH_INTERVAL_S, "replica-monitor", self._failed):
            yield self

    def _failed(self, exc: RedisError | OSError) -> None:
        if not is_transient(exc):
            logger.warning("replica_refresh_failed", error=str(exc))
        self.link_up = False
        metrics.READ_REPLICA_LINK_UP.set(0)


def _fields(info: Any) -> dict[str, str]:
    """``INFO``'s reply (bytes, or a dict where the client parses it) as text fields."""
    if isinstance(info, dict):
        return {str(k): str(v) for k, v in info.items()}
    text = info.decode() if isinstance(info, bytes) else str(info)
    found = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            found[name.strip()] = value.strip()
    return found
