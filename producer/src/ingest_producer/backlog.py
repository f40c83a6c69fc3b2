"""Backpressure: how far behind the workers are, refreshed in the background.

Requests read :attr:`BacklogMonitor.overloaded`, a plain attribute: the ingest route never
spends a Redis call on this. The backlog is the group's undelivered entries (``lag``) plus its
pending ones; where Redis cannot tell the lag (NULL after deletions or trims), the stream length
stands in: an overestimate, so the producer errs towards slowing clients down, never towards
accepting what cannot be processed.

The same round trip samples the queue gauges of ``/metrics`` when they are exported (stream
length, entries added, pending, lag, consumers, oldest pending age, dead letters).

With stream shards every shard is read in the same round trip, and the backlog and the gauges
are their sums.

The same poll notices a consumer group that Redis lost (a restart without persistence, a
failover to an empty replica, a FLUSHALL) and recreates it at ID 0, so what is accepted while
no worker runs waits for the workers to come instead of sitting in a stream nobody reads.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from redis.exceptions import NoPermissionError, RedisError

from ingest_producer import metrics
from ingest_producer.polling import polling
from ingest_shared.schema import now_ms
from ingest_shared.streams import ensure_group, is_transient

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from ingest_shared.keys import StreamKeys
    from ingest_shared.redis_client import RedisClient

REFRESH_INTERVAL_S = 0.25

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
        """Watches one stream; with ``dead_letter`` set, each refresh also samples the queue
        gauges. :meth:`over` watches every shard."""
        self._redis = redis
        self._shards: tuple[tuple[str, str | None], ...] = ((stream, dead_letter),)
        self._gauges = dead_letter is not None
        self._group = group
        self._may_create_group = True
        self.max_backlog = max_backlog
        self.backlog: int | None = None
        self.overloaded = False

    @classmethod
    def over(
        cls,
        redis: RedisClient,
        shards: Sequence[StreamKeys],
        group: str,
        max_backlog: int,
        *,
        gauges: bool,
    ) -> BacklogMonitor:
        """A monitor of every shard's stream: the backlog and the gauges are their sums."""
        first = shards[0]
        monitor = cls(
            redis,
            first.stream,
            group,
            max_backlog,
            dead_letter=first.dead_letter if gauges else None,
        )
        monitor._shards = tuple((s.stream, s.dead_letter if gauges else None) for s in shards)
        return monitor

    async def _create_group(self, stream: str) -> bool:
        """ensure_group, unless this user may not (a read-only user: then only say so once)."""
        try:
            return await ensure_group(self._redis, stream, self._group)
        except NoPermissionError as exc:
            self._may_create_group = False
            logger.warning("group_recreation_refused_by_acl", error=str(exc))
            return False

    async def refresh(self) -> None:
        """Read every shard's lag and pending count once (one round trip: a cluster pipeline
        sends each node its shards' commands at once)."""
        pipe = self._redis.pipeline(transaction=False)
        for stream, dead_letter in self._shards:
            pipe.execute_command("XINFO", "GROUPS", stream)
            pipe.execute_command("XLEN", stream)
            if dead_letter is not None:
                pipe.execute_command("XLEN", dead_letter)
                pipe.execute_command("XINFO", "STREAM", stream)
                pipe.xpending(stream, self._group)
        replies = await pipe.execute(raise_on_error=False)
        width = 5 if self._gauges else 2
        found = [
            await self._shard_state(stream, replies[i * width : (i + 1) * width])
            for i, (stream, _) in enumerate(self._shards)
        ]
        self.backlog = sum(state.backlog for state in found)
        self.overloaded = self.backlog > self.max_backlog
        if self._gauges:
            _export(found)

    async def _shard_state(self, stream: str, replies: list[Any]) -> _ShardState:
        """One shard's numbers from its replies; its group is recreated if it went missing."""
        groups, length, *sampled = replies
        if isinstance(length, RedisError):
            raise length
        missing = isinstance(groups, RedisError) or _find_group(groups, self._group) is None
        # The stream or the group is missing: Redis lost it, or nothing was set up yet.
        if missing and self._may_create_group and await self._create_group(stream):
            metrics.GROUP_RECREATED.inc()
            logger.error(
                "consumer_group_recreated",
                stream=stream,
                group=self._group,
                detail=(
                    "the consumer group was missing (Redis restarted without persistence, "
                    "failed over to an empty replica, or was flushed); recreated at ID 0 so "
                    "the workers process everything in the stream"
                ),
            )
        group = None if missing else _find_group(groups, self._group)
        state = _ShardState(group, int(length), _backlog_of(group, int(length)))
        if sampled:
            state.dead_letters, state.stream_info, state.pending = sampled
        return state

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[BacklogMonitor]:
        """Refresh every 250 ms in a background task for the life of the block."""
        async with polling(self.refresh, REFRESH_INTERVAL_S, "backlog-monitor", _failed):
            yield self


def _failed(exc: RedisError | OSError) -> None:
    if not is_transient(exc):
        logger.warning("backlog_refresh_failed", error=str(exc))
    # Unknown backlog: keep the last verdict; the ingest route reports Redis itself.


@dataclass(slots=True)
class _ShardState:
    """What one refresh read of one shard (the sampled replies may be errors)."""

    group: dict[str, Any] | None
    length: int
    backlog: int
    dead_letters: object = None
    stream_info: object = None
    pending: object = None


def _find_group(groups: list[Any], group: str) -> dict[str, Any] | None:
    """The XINFO GROUPS entry of ``group``, as a dict, or None."""
    for info in groups:
        fields = _as_dict(info)
        name = fields.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == group:
            return fields
    return None


def _backlog_of(group: dict[str, Any] | None, length: int) -> int:
    if group is None:  # no group yet: every entry is waiting for the first worker
        return length
    lag = group.get("lag")
    pending = int(group.get("pending") or 0)
    return (length if lag is None else int(lag)) + pending


def _export(shards: Sequence[_ShardState]) -> None:
    """Set the queue gauges from one refresh, summed over the shards; a gauge whose reply is
    an error on any shard keeps its last value."""
    metrics.QUEUE_LENGTH.set(sum(s.length for s in shards))
    metrics.QUEUE_BACKLOG.set(sum(s.backlog for s in shards))
    dead_letters = [s.dead_letters for s in shards]
    if all(isinstance(n, int) for n in dead_letters):
        metrics.DEAD_LETTER_LENGTH.set(sum(n for n in dead_letters if isinstance(n, int)))
    infos = [s.stream_info for s in shards]
    if all(isinstance(info, dict) for info in infos):
        added = (_as_dict(info).get("entries-added") for info in infos)
        metrics.QUEUE_ADDED.set(sum(int(n or 0) for n in added))
    pending = lag = consumers = 0
    oldest: int | None = None
    for shard in shards:
        group = shard.group
        if group is None:
            lag += shard.length
        else:
            shard_lag = group.get("lag")
            pending += int(group.get("pending") or 0)
            lag += shard.length if shard_lag is None else int(shard_lag)
            consumers += int(group.get("consumers") or 0)
        smallest = shard.pending.get("min") if isinstance(shard.pending, dict) else None
        if smallest:
            enqueued_ms = int(smallest.split(b"-", 1)[0])
            oldest = enqueued_ms if oldest is None else min(oldest, enqueued_ms)
    metrics.QUEUE_PENDING.set(pending)
    metrics.QUEUE_LAG.set(lag)
    metrics.QUEUE_CONSUMERS.set(consumers)
    age = 0 if oldest is None else max(0, now_ms() - oldest) / 1000
    metrics.QUEUE_OLDEST_PENDING_AGE.set(age)


def _as_dict(info: Any) -> dict[str, Any]:
    """XINFO GROUPS entries come as dicts from redis-py's parser, or flat lists (RESP2 raw)."""
    if isinstance(info, dict):
        return {(k.decode() if isinstance(k, bytes) else k): v for k, v in info.items()}
    pairs = iter(info)
    return {
        (k.decode() if isinstance(k, bytes) else k): v for k, v in zip(pairs, pairs, strict=False)
    }
