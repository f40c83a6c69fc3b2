"""Reading the stream with bounded memory: new entries, own pending entries, and claims.

With ``INGEST_MAX_ENTRY_BYTES`` set (the default), batches are read by the worker library's
functions (``ingest_read``, ``ingest_claim``), which hand back an entry over the limit as its
size and a bounded prefix: whatever someone writes into the stream, a batch costs at most
``count x limit`` bytes here. Functions cannot block, so an idle worker waits with a native
``XREADGROUP COUNT 1 BLOCK``: at most one entry arrives whole, and is bounded here. Measured:
the function read costs Redis ~1.7 us more CPU per entry than a native read; 0 turns the
bound off and reads natively.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from ingest_shared import keys as k
from ingest_shared.functions import WORKER_LIBRARY, fcall
from ingest_shared.redis_client import call_at

if TYPE_CHECKING:
    from ingest_shared.redis_client import RedisClient
    from ingest_shared.settings import Settings
    from ingest_shared.streams import Entry

# Bytes of an oversized entry kept for its dead letter.
PREFIX_BYTES = 1_024
# XREADGROUP on one stream as redis-py parses it: [[stream, [(id, fields), ...]]], or [].
ReadReply: TypeAlias = list[list[Any]]
# An entry as the functions return it: [id, [field, value, ...] or None (deleted)].
RawEntry: TypeAlias = list[Any]


class Claim(NamedTuple):
    """One XAUTOCLAIM: the cursor to continue from, live entries, ids deleted while pending."""

    cursor: bytes
    entries: list[Entry]
    deleted: list[bytes]


class StreamReader:
    """Reads for one consumer of the group; see the module docstring for the bound."""

    def __init__(self, redis: RedisClient, settings: Settings, stream: str | None = None) -> None:
        self._redis = redis
        self._stream = stream or settings.keys.stream
        self._group = settings.consumer_group
        self._consumer = settings.consumer_name
        self._count = settings.batch_size
        self._max_bytes = settings.max_entry_bytes

    @property
    def stream(self) -> str:
        """The stream this reader reads."""
        return self._stream

    async def new(self, block_ms: int) -> list[Entry]:
        """Up to a batch of never-delivered entries, waiting up to ``block_ms`` for one."""
        if not self._max_bytes:
            return await self._native(b">", self._count, block_ms)
        entries = await self._function_read(b">")
        if entries:
            return entries
        # Nothing waiting: block natively for the next entry (one, so bounded by one entry).
        return [_bounded(entry, self._max_bytes) for entry in await self._native(b">", 1, block_ms)]

    async def own_pending(self, after: bytes) -> list[Entry]:
        """Up to a batch of this consumer's pending entries after ``after`` (a delivery each)."""
        if not self._max_bytes:
            return await self._native(after, self._count, None)
        return await self._function_read(after)

    async def claim(self, min_idle_ms: int, cursor: bytes) -> Claim:
        """XAUTOCLAIM up to a batch of entries idle longer than ``min_idle_ms``."""
        if not self._max_bytes:
            reply: list[Any] = await self._redis.xautoclaim(
                self._stream,
                self._group,
                self._consumer,
                min_idle_time=min_idle_ms,
                start_id=cursor,
                count=self._count,
            )
            return Claim(reply[0], reply[1], reply[2] if len(reply) > 2 else [])
        next_cursor, raw, deleted = await fcall(
            self._redis,
            WORKER_LIBRARY,
            "FCALL",
            "ingest_claim",
            1,
            self._stream,
            self._group,
            self._consumer,
            min_idle_ms,
            cursor,
            self._count,
            self._max_bytes,
            PREFIX_BYTES,
        )
        return Claim(next_cursor, _entries(raw), deleted)

    async def _native(self, after: bytes, count: int, block_ms: int | None) -> list[Entry]:
        block = () if block_ms is None else ("BLOCK", block_ms)
        reply: ReadReply = await call_at(
            self._redis,
            self._stream,
            "XREADGROUP",
            "GROUP",
            self._group,
            self._consumer,
            "COUNT",
            count,
            *block,
            "STREAMS",
            self._stream,
            after,
        )
        entries: list[Entry] = reply[0][1] if reply else []
        return entries

    async def _function_read(self, after: bytes) -> list[Entry]:
        raw: list[RawEntry] = await fcall(
            self._redis,
            WORKER_LIBRARY,
            "FCALL",
            "ingest_read",
            1,
            self._stream,
            self._group,
            self._consumer,
            self._count,
            self._max_bytes,
            PREFIX_BYTES,
            after,
        )
        return _entries(raw)


def _entries(raw: list[RawEntry]) -> list[Entry]:
    """Function replies as redis-py parses XREADGROUP: fields as a dict, None if deleted."""
    return [
        (entry_id, None if not fields else dict(zip(fields[::2], fields[1::2], strict=True)))
        for entry_id, fields in raw
    ]


def _bounded(entry: Entry, max_bytes: int) -> Entry:
    """What ``ingest_read`` would have returned for one entry read natively."""
    entry_id, fields = entry
    if not fields:
        return entry
    size = sum(len(name) + len(value) for name, value in fields.items())
    if size <= max_bytes:
        return entry
    flat = b" ".join(part for pair in fields.items() for part in pair)
    return entry_id, {k.FIELD_OVERSIZED: b"%d" % size, k.FIELD_PREFIX: flat[:PREFIX_BYTES]}
