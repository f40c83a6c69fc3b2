"""Backpressure: how far behind the workers are, refreshed in the background.

Requests read :attr:`BacklogMonitor.overloaded`, a plain attribute: the ingest route never
spends a Redis call on this. The backlog is the group's undelivered entries (``lag``) plus its
pending ones; where Redis cannot tell the lag (NULL after deletions or trims), the stream length
stands in: an overestimate, so the producer errs towards slowing clients down, never towards
accepting what cannot be processed.

The same round trip samples the queue gauges of ``/metrics`` when they are exported (stream
length, entries added, pending, lag, consumers, oldest pending age, dead letters).

The same poll notices a consumer group that Redis lost (a restart without persistence, a
failover to an empty replica, a FLUSHALL) and recreates it at ID 0, so what is accepted while
no worker runs waits for the workers to come instead of sitting in a stream nobody reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog
from redis.exceptions import NoPermissionError, RedisError

from ingest_producer import metrics
from ingest_shared.schema import now_ms
from ingest_shared.streams import ensure_group, is_transient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ingest_shared.redis_client import RedisClient

REFRESH_INTERVAL_S = 0.25
STOP_TIMEOUT_S = 2.0

logger = structlog.get_logger(__name__)


class BacklogMonitor:
    """Keeps :attr:`backlog` and :attr:`overloaded` current while :meth:`running`."""

    def __init__(
        self,
        redis: RedisClient,
        stream: str,
        group: str,
        max_backlog: int,
        *,
        dead_letter: str | None = None,
    ) -> None:
        """With ``dead_letter`` set, each refresh also samples the queue gauges."""
        self._redis = redis
        self._stream = stream
        self._group = group
        self._dead_letter = dead_letter
        self._may_create_group = True
        self.max_backlog = max_backlog
        self.backlog: int | None = None
        self.overloaded = False
        self._stopping = asyncio.Event()

    async def _create_group(self) -> bool:
        """ensure_group, unless this user may not (a read-only user: then only say so once)."""
        try:
            return await ensure_group(self._redis, self._stream, self._group)
        except NoPermissionError as exc:
            self._may_create_group = False
            logger.warning("group_recreation_refused_by_acl", error=str(exc))
            return False

    async def refresh(self) -> None:
        """Read the group's lag and pending count once (one round trip)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.execute_command("XINFO", "GROUPS", self._stream)
        pipe.execute_command("XLEN", self._stream)
        if self._dead_letter is not None:
            pipe.execute_command("XLEN", self._dead_letter)
            pipe.execute_command("XINFO", "STREAM", self._stream)
            pipe.xpending(self._stream, self._group)
        groups, length, *sampled = await pipe.execute(raise_on_error=False)
        if isinstance(length, RedisError):
            raise length
        missing = isinstance(groups, RedisError) or _find_group(groups, self._group) is None
        # The stream or the group is missing: RedisClient lost it, or nothing was set up yet.
        if missing and self._may_create_group and await self._create_group():
            metrics.GROUP_RECREATED.inc()
            logger.error(
                "consumer_group_recreated",
                stream=self._stream,
                group=self._group,
                detail=(
                    "the consumer group was missing (Redis restarted without persistence, "
                    "failed over to an empty replica, or was flushed); recreated at ID 0 so "
                    "the workers process everything in the stream"
                ),
            )
        if missing:
            groups = []
        self.backlog = _backlog_of(groups, self._group, int(length))
        self.overloaded = self.backlog > self.max_backlog
        if sampled:
            dead_letters, stream_info, pending = sampled
            _export(
                _find_group(groups, self._group),
                int(length),
                self.backlog,
                dead_letters=dead_letters,
                stream_info=stream_info,
                pending=pending,
            )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[BacklogMonitor]:
        """Refresh every 250 ms in a background task for the life of the block."""
        self._stopping.clear()
        task = asyncio.create_task(self._loop(), name="backlog-monitor")
        try:
            yield self
        finally:
            # The flag, not only cancel(): a cancellation landing inside a redis-py call can be
            # absorbed there, and then the loop would go on and this await never return.
            self._stopping.set()
            task.cancel()
            await asyncio.wait([task], timeout=STOP_TIMEOUT_S)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                if not is_transient(exc):
                    logger.warning("backlog_refresh_failed", error=str(exc))
                # Unknown backlog: keep the last verdict; the ingest route reports Redis itself.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), REFRESH_INTERVAL_S)


def _find_group(groups: list[Any], group: str) -> dict[str, Any] | None:
    """The XINFO GROUPS entry of ``group``, as a dict, or None."""
    for info in groups:
        fields = _as_dict(info)
        name = fields.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == group:
            return fields
    return None


def _backlog_of(groups: list[Any], group: str, length: int) -> int:
    fields = _find_group(groups, group)
    if fields is None:  # no group yet: every entry is waiting for the first worker
        return length
    lag = fields.get("lag")
    pending = int(fields.get("pending") or 0)
    return (length if lag is None else int(lag)) + pending


def _export(
    group: dict[str, Any] | None,
    length: int,
    backlog: int,
    *,
    dead_letters: object,
    stream_info: object,
    pending: object,
) -> None:
    """Set the queue gauges from one refresh; replies that are errors leave theirs alone."""
    metrics.QUEUE_LENGTH.set(length)
    metrics.QUEUE_BACKLOG.set(backlog)
    if isinstance(dead_letters, int):
        metrics.DEAD_LETTER_LENGTH.set(dead_letters)
    if isinstance(stream_info, dict):
        info = _as_dict(stream_info)
        metrics.QUEUE_ADDED.set(int(info.get("entries-added") or 0))
    if group is None:
        metrics.QUEUE_PENDING.set(0)
        metrics.QUEUE_LAG.set(length)
        metrics.QUEUE_CONSUMERS.set(0)
    else:
        lag = group.get("lag")
        metrics.QUEUE_PENDING.set(int(group.get("pending") or 0))
        metrics.QUEUE_LAG.set(length if lag is None else int(lag))
        metrics.QUEUE_CONSUMERS.set(int(group.get("consumers") or 0))
    oldest = pending.get("min") if isinstance(pending, dict) else None
    if oldest:
        enqueued_ms = int(oldest.split(b"-", 1)[0])
        metrics.QUEUE_OLDEST_PENDING_AGE.set(max(0, now_ms() - enqueued_ms) / 1000)
    else:
        metrics.QUEUE_OLDEST_PENDING_AGE.set(0)


def _as_dict(info: Any) -> dict[str, Any]:
    """XINFO GROUPS entries come as dicts from redis-py's parser, or flat lists (RESP2 raw)."""
    if isinstance(info, dict):
        return {(k.decode() if isinstance(k, bytes) else k): v for k, v in info.items()}
    pairs = iter(info)
    return {
        (k.decode() if isinstance(k, bytes) else k): v for k, v in zip(pairs, pairs, strict=False)
    }
