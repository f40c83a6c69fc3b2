"""Claiming entries that other consumers left pending too long, and their delivery counts.

Claims use plain XAUTOCLAIM, not JUSTID: a claim here is a real delivery (the fields come back
and this worker processes them at once), so it should count as one, and a plain claim is
counted by Redis and returns the fields in the same round trip. XAUTOCLAIM does not report the
count; one XPENDING over the claimed range does. A count above ``max_deliveries`` means the
entry was handed out that often without being acknowledged: it is dead-lettered untried.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ingest_shared.redis_client import RedisClient
    from ingest_shared.settings import Settings
    from ingest_shared.streams import Entry
    from ingest_worker.reader import StreamReader

MAX_DELIVERIES_REASON = "max deliveries exceeded"
_CURSOR_START = b"0-0"

# XPENDING's extended form as redis-py parses it: message_id, consumer, times_delivered, ...
PendingRows: TypeAlias = list[dict[str, Any]]


class Claimed(NamedTuple):
    """One reclaim: entries to process (deleted ones as ``(id, None)``, to be acked only)."""

    entries: list[Entry]
    forced: dict[bytes, str]
    more: bool  # the scan of the pending list has not wrapped yet: claim again soon


class Reclaimer:
    """XAUTOCLAIMs idle entries to this consumer, keeping the scan cursor between runs.

    ``takeover_idle_ms`` (the shard's lease, less a tick) is the idle time of the first pass
    over the pending list, from the shard's takeover until the scan wraps: the lease says the
    previous owner is gone (or paused: it cannot keep the lease either, and storing an entry
    twice stores it once), so its entries need not wait ``claim_idle_ms`` (60 s) more while
    events pile up behind them; this loop's own entries are younger than that.
    """

    def __init__(
        self,
        redis: RedisClient,
        settings: Settings,
        reader: StreamReader,
        takeover_idle_ms: int | None = None,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._reader = reader
        self._cursor = _CURSOR_START
        idle = settings.claim_idle_ms
        self._idle_ms = idle if takeover_idle_ms is None else min(idle, takeover_idle_ms)

    def restart(self) -> None:
        """Scan the pending list from the start again (the group was recreated)."""
        self._cursor = _CURSOR_START

    async def claim(self) -> Claimed:
        """Claim up to one batch of entries idle longer than ``claim_idle_ms`` (than
        ``takeover_idle_ms`` on the first pass)."""
        cursor, live, deleted = await self._reader.claim(self._idle_ms, self._cursor)
        self._cursor = cursor
        if cursor == _CURSOR_START:  # the first pass is over
            self._idle_ms = self._settings.claim_idle_ms
        forced = await over_delivered(self._redis, self._settings, live, self._reader.stream)
        # Deleted entries were already dropped from the pending list; acking them is harmless
        # and makes the processor's one XACK cover everything this claim reported.
        gone: list[Entry] = [(entry_id, None) for entry_id in deleted]
        return Claimed(live + gone, forced, more=cursor != _CURSOR_START)


async def over_delivered(
    redis: RedisClient, settings: Settings, entries: Sequence[Entry], stream: str | None = None
) -> dict[bytes, str]:
    """Ids among ``entries`` (just delivered to this consumer, in id order) that were delivered
    more than ``settings.max_deliveries`` times, mapped to the dead-letter reason.

    The count includes the delivery that just happened. One XPENDING call over the entries' id
    range, filtered by consumer: it holds only these entries, as the loop acks each batch (or
    leaves it) before it reads or claims the next.
    """
    if not entries:
        return {}
    rows: PendingRows = await redis.xpending_range(
        stream or settings.keys.stream,
        settings.consumer_group,
        min=entries[0][0],
        max=entries[-1][0],
        count=len(entries),
        consumername=settings.consumer_name,
    )
    limit = settings.max_deliveries
    return {
        row["message_id"]: MAX_DELIVERIES_REASON
        for row in rows
        if int(row["times_delivered"]) > limit
    }
