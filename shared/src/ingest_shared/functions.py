"""The server-side functions: batch appends (``ingest_append``), safe trimming
(``ingest_trim``) and dead-letter replay (``ingest_replay``).

redis-py spends tens of microseconds of Python per pipelined command; one FCALL carrying every
event's fields costs a fraction of that per event. One call carries several requests
("segments"), each with its own idempotency key and rate limit, so the producer's coalescing
appender keeps one round trip per batch while every request is checked on its own, atomically.
"""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING, Any, TypeAlias

import msgspec
from redis.exceptions import ResponseError

from ingest_shared import keys as k
from ingest_shared.redis_client import call
from ingest_shared.schema import Base, EventOut

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis
    from redis.typing import EncodableT

    from ingest_shared.keys import Keys

LIBRARY_CODE = files(__package__).joinpath("lua/telemetry_ingest.lua").read_text()
# What Redis answers when the library is not loaded (a fresh, restarted or flushed server).
NO_FUNCTION = "Function not found"
_FIELDS = (k.FIELD_SOURCE, k.FIELD_METRIC, k.FIELD_VALUE, k.FIELD_OCCURRED_AT)
_MSGPACK = msgspec.msgpack.Encoder()


class Idempotency(Base):
    """Guard a segment with a stored response, keyed by a digest of the client's key.

    ``echo`` is stored with the ids and handed back on a repeat (the parts of the original
    response body that are not ids).
    """

    key: str
    ttl_ms: int
    body_hash: str
    echo: bytes = b""


class RateLimit(Base):
    """Count a segment's events against ``limit`` per fixed ``window_ms`` on ``key``."""

    key: str
    limit: int
    window_ms: int


class Segment(Base):
    """The events of one request, accepted or refused as a whole under its guards."""

    events: list[EventOut]
    idempotency: Idempotency | None = None
    rate_limit: RateLimit | None = None


class Appended(Base):
    """The segment was appended; its stream ids in order."""

    ids: list[bytes]


class Duplicate(Base):
    """A repeat of a stored request: nothing appended; the original ids and echo."""

    ids: list[bytes]
    echo: bytes


class Conflict(Base):
    """The idempotency key was stored for a different body: nothing appended."""


class RateLimited(Base):
    """Over the rate limit: nothing appended; the window ends in ``retry_after_ms``."""

    retry_after_ms: int


SegmentReply = Appended | Duplicate | Conflict | RateLimited
# One segment's reply as redis-py parses it: a tag, then ids or the refusal's details.
RawSegmentReply: TypeAlias = list[bytes | int]
_CONFLICT = Conflict()


async def load_functions(redis: Redis) -> None:
    """(Re)load the library; safe to call from every process at every start."""
    await call(redis, "FUNCTION", "LOAD", "REPLACE", LIBRARY_CODE)


async def fcall(redis: Redis, *args: EncodableT) -> Any:
    """Run an FCALL, loading the library first if the server lost it (restart, FLUSHALL)."""
    try:
        return await call(redis, *args)
    except ResponseError as exc:
        if NO_FUNCTION not in str(exc):
            raise
    await load_functions(redis)
    return await call(redis, *args)


def append_command(keys: Keys, segments: Sequence[Segment]) -> list[EncodableT]:
    """The FCALL arguments appending every segment in order (for a pipeline or :func:`fcall`).

    The protocol is described at the top of ``lua/telemetry_ingest.lua``.
    """
    fcall_keys: list[EncodableT] = [keys.stream]
    args: list[EncodableT] = [len(_FIELDS), *_FIELDS, len(segments)]
    for segment in segments:
        events, idempotency, rate_limit = segment.events, segment.idempotency, segment.rate_limit
        if idempotency is None:
            args += (len(events), 0, "", "")
        else:
            fcall_keys.append(idempotency.key)
            args += (len(events), idempotency.ttl_ms, idempotency.body_hash, idempotency.echo)
        if rate_limit is None:
            args += (0, 0)
        else:
            fcall_keys.append(rate_limit.key)
            args += (rate_limit.limit, rate_limit.window_ms)
        args.append(_payload(events))
    return ["FCALL", "ingest_append", len(fcall_keys), *fcall_keys, *args]


def _payload(events: Sequence[EventOut]) -> bytes:
    """Every field value of ``events`` in ``_FIELDS`` order, as one MessagePack array: one
    argument instead of four per event (redis-py spends ~0.7 us encoding each)."""
    values: list[str] = []
    add = values.extend
    for e in events:
        add((e.source, e.metric, repr(e.value), e.occurredAt))
    return _MSGPACK.encode(values)


def parse_append_reply(reply: list[RawSegmentReply]) -> list[SegmentReply]:
    """The function's reply, one outcome per segment, in order."""
    return [_parse_segment(segment) for segment in reply]


def _parse_segment(reply: RawSegmentReply) -> SegmentReply:
    tag = reply[0]
    if tag == b"ok":
        return Appended(reply[1:])  # type: ignore[arg-type]
    if tag == b"dup":
        ids, echo = reply[1], reply[2]
        assert isinstance(ids, bytes)
        assert isinstance(echo, bytes)
        return Duplicate(ids.split(b","), echo)
    if tag == b"conflict":
        return _CONFLICT
    return RateLimited(int(reply[1]))


async def append_segments(
    redis: Redis, keys: Keys, segments: Sequence[Segment]
) -> list[SegmentReply]:
    """Append ``segments`` in one round trip, each under its own guards."""
    reply = await fcall(redis, *append_command(keys, segments))
    return parse_append_reply(reply)


async def trim_stream(redis: Redis, keys: Keys, keep: int) -> int:
    """XTRIM MINID to what every group has finished with, keeping ``keep`` newest; returns
    the number of entries removed."""
    removed, _ = await fcall(redis, "FCALL", "ingest_trim", 1, keys.stream, keep)
    return int(removed)


class Replayed(Base):
    """What one replay call did: ``moved`` maps dead-letter ids to their new stream ids;
    ``missing`` dead-letter ids were no longer there (deleted, or replayed by another call)."""

    moved: dict[str, str]
    missing: list[str]


async def replay_dead_letters(
    redis: Redis, keys: Keys, letters: Sequence[tuple[str, dict[str, str]]]
) -> Replayed:
    """Append each (dead-letter id, stream fields) to the stream and delete that dead letter,
    atomically per entry, in one call: a retry or a concurrent call with the same ids moves
    each entry once. The caller validates the fields first.

    On Redis Cluster the stream and the dead-letter stream must share a hash slot.
    """
    if not letters:
        return Replayed({}, [])
    args: list[EncodableT] = []
    for letter_id, fields in letters:
        args += (letter_id, len(fields))
        for name, value in fields.items():
            args += (name, value)
    moved, missing = await fcall(
        redis, "FCALL", "ingest_replay", 2, keys.stream, keys.dead_letter, *args
    )
    pairs = [item.decode() for item in moved]
    return Replayed(dict(zip(pairs[::2], pairs[1::2], strict=True)), [m.decode() for m in missing])
