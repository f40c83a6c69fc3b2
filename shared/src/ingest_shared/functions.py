"""The server-side functions, in two libraries so each service loads (and its ACL allows)
only its own: the producer's (``lua/producer.lua``: batch appends ``ingest_append``,
dead-letter replay ``ingest_replay``, ``ingest_release_consumer``) and the worker's
(``lua/worker.lua``: safe trimming ``ingest_trim``).

redis-py spends tens of microseconds of Python per pipelined command; one FCALL carrying every
event's fields costs a fraction of that per event. One call carries several requests
("segments"), each with its own idempotency key and rate limit, and each event names its
stream, so the producer's coalescing appender keeps one round trip per batch (on a single node,
whatever the number of stream shards) while every request is checked on its own, atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, Any, TypeAlias

import msgspec
from redis.exceptions import ResponseError

from ingest_shared import keys as k
from ingest_shared.redis_client import call, call_at, each_primary
from ingest_shared.schema import Base, EventOut, canonical_labels

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.typing import EncodableT

    from ingest_shared.keys import StreamKeys
    from ingest_shared.redis_client import RedisClient


@dataclass(frozen=True, slots=True)
class Library:
    """One Redis Function library: its name and Lua source."""

    name: str
    code: str

    def local_function(self, name: str) -> str:
        """The source of ``local function <name>`` (up to its ``end`` at column 0), for a script
        that needs the same code (the RFC 3339 formatting, in tests and the benchmark)."""
        start = self.code.index(f"local function {name}(")
        return self.code[start : self.code.index("\nend\n", start) + len("\nend\n")]


def _library(name: str, file: str) -> Library:
    return Library(name, files(__package__).joinpath(f"lua/{file}").read_text())


PRODUCER_LIBRARY = _library("ingest_producer", "producer.lua")
WORKER_LIBRARY = _library("ingest_worker", "worker.lua")
# Before the split, one library held every function; function names are global, so it must
# go before a new library can register the same names.
LEGACY_LIBRARY = "telemetry_ingest"
# What Redis answers when the library is not loaded (a fresh, restarted or flushed server).
NO_FUNCTION = "Function not found"
_ALREADY_EXISTS = "already exists"
_FIELDS = (k.FIELD_SOURCE, k.FIELD_METRIC, k.FIELD_VALUE, k.FIELD_OCCURRED_AT)
# A call holding an event with labels: one more field, which the function leaves out of the
# entries of the events without (an empty value).
_LABELLED_FIELDS = (*_FIELDS, k.FIELD_LABELS)
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
    """The events of one request, accepted or refused as a whole under its guards.

    Each event goes to its entry of ``streams`` when given (one stream per event), else to
    ``stream``, else to the call's (``append_command``'s ``keys.stream``). One call may append
    to several streams on a single node; on Redis Cluster every stream and guard key of a call
    must share a hash slot.
    """

    events: list[EventOut]
    idempotency: Idempotency | None = None
    rate_limit: RateLimit | None = None
    stream: str | None = None
    streams: list[str] | None = None


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
    """Does not fit in what is left of the window: nothing appended; the window ends in
    ``retry_after_ms``."""

    retry_after_ms: int


class OverLimit(Base):
    """More events than the whole window allows (``limit``): it can never pass as one request."""

    limit: int


SegmentReply = Appended | Duplicate | Conflict | RateLimited | OverLimit
# One segment's reply as redis-py parses it: a tag, then ids or the refusal's details.
RawSegmentReply: TypeAlias = list[bytes | int]
_CONFLICT = Conflict()


async def load_library(redis: RedisClient, library: Library) -> None:
    """(Re)load ``library`` (on every primary of a cluster); safe to call from every process at
    every start.

    A server still holding the single library of earlier releases has it deleted first (its
    function names clash); that is the one "already exists" error tolerated here.
    """
    load = ("FUNCTION", "LOAD", "REPLACE", library.code)
    try:
        await each_primary(redis, [load])
    except ResponseError as exc:
        if _ALREADY_EXISTS not in str(exc):
            raise
        try:
            await each_primary(redis, [("FUNCTION", "DELETE", LEGACY_LIBRARY)])
        except ResponseError:
            raise exc from None  # the clash is with something else: report it
        await each_primary(redis, [load])


async def fcall(redis: RedisClient, library: Library, *args: EncodableT) -> Any:
    """Run an FCALL of a ``library`` function, loading the library first if the server lost
    it (restart, FLUSHALL). ``args`` start with ``FCALL name numkeys``; with keys, the call
    goes straight to the node that owns the first (every key of a call shares its slot)."""
    key = args[3] if int(args[2]) else None
    try:
        return await _fcall(redis, key, args)
    except ResponseError as exc:
        if NO_FUNCTION not in str(exc):
            raise
    await load_library(redis, library)
    return await _fcall(redis, key, args)


async def _fcall(redis: RedisClient, key: EncodableT | None, args: tuple[EncodableT, ...]) -> Any:
    if isinstance(key, str | bytes):
        return await call_at(redis, key, *args)
    return await call(redis, *args)


def append_command(keys: StreamKeys, segments: Sequence[Segment]) -> list[EncodableT]:
    """The FCALL arguments appending every segment in order, each event to its stream (see
    :class:`Segment`): for a pipeline or :func:`fcall`.

    The streams come first in the call's keys, in the order events first name them: the
    first is the key a cluster client routes the call by. The protocol is described at the
    top of ``lua/producer.lua``.
    """
    # Labels are rare next to the events of devices: only a call holding some pays for them.
    labelled = any(e.labels is not None for segment in segments for e in segment.events)
    streams: dict[str, int] = {}  # stream -> its index in KEYS (1-based, as Lua counts)
    guard_keys: list[EncodableT] = []
    args: list[EncodableT] = []
    for segment in segments:
        events, idempotency, rate_limit = segment.events, segment.idempotency, segment.rate_limit
        header: list[str | int] = [len(events)]
        if idempotency is None:
            header += (0, "")
            echo = b""
        else:
            guard_keys.append(idempotency.key)
            header += (idempotency.ttl_ms, idempotency.body_hash)
            echo = idempotency.echo
        if rate_limit is None:
            header += (0, 0)
        else:
            guard_keys.append(rate_limit.key)
            header += (rate_limit.limit, rate_limit.window_ms)
        per_event = segment.streams
        if per_event is None:
            stream = segment.stream or keys.stream
            index = streams.get(stream)
            if index is None:
                streams[stream] = index = len(streams) + 1
            header += [index] * len(events)
        else:
            if len(per_event) != len(events):
                msg = f"{len(per_event)} streams for {len(events)} events"
                raise ValueError(msg)
            for stream in dict.fromkeys(per_event):  # each once, in order of first use
                if stream not in streams:
                    streams[stream] = len(streams) + 1
            header += map(streams.__getitem__, per_event)
        args += (_segment_array(header, events, labelled), echo)
    if not streams:
        streams[keys.stream] = 1
    numkeys = len(streams) + len(guard_keys)
    fields = _LABELLED_FIELDS if labelled else _FIELDS
    return [
        "FCALL", "ingest_append", numkeys, *streams, *guard_keys,
        len(fields), *fields, len(streams), *args,
    ]  # fmt: skip


def _segment_array(header: list[str | int], events: Sequence[EventOut], labelled: bool) -> bytes:
    """``header`` (the segment's numbers and its events' streams), then every field value of
    ``events`` in ``_FIELDS`` (``labelled``: ``_LABELLED_FIELDS``) order, as one MessagePack
    array: one argument per segment (redis-py packed a call of eight segments in ~53 us with
    eight arguments each, ~16 us with two)."""
    add = header.extend
    if labelled:
        # The samples of one protocol line or series share one labels dict: encode it once.
        texts: dict[int, str] = {}
        for e in events:
            labels = e.labels
            if labels is None:
                text = ""
            else:
                text = texts.get(id(labels), "")
                if not text:
                    text = texts[id(labels)] = canonical_labels(labels).decode()
            add((e.source, e.metric, repr(e.value), e.occurredAt, text))
    else:
        for e in events:
            add((e.source, e.metric, repr(e.value), e.occurredAt))
    return _MSGPACK.encode(header)


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
    if tag == b"toolarge":
        return OverLimit(int(reply[1]))
    return RateLimited(int(reply[1]))


async def append_segments(
    redis: RedisClient, keys: StreamKeys, segments: Sequence[Segment]
) -> list[SegmentReply]:
    """Append ``segments`` in one round trip, each under its own guards."""
    reply = await fcall(redis, PRODUCER_LIBRARY, *append_command(keys, segments))
    return parse_append_reply(reply)


async def trim_stream(redis: RedisClient, keys: StreamKeys, keep: int) -> int:
    """XTRIM MINID to what every group has finished with, keeping ``keep`` newest; returns
    the number of entries removed."""
    removed, _ = await fcall(redis, WORKER_LIBRARY, "FCALL", "ingest_trim", 1, keys.stream, keep)
    return int(removed)


class Replayed(Base):
    """What one replay call did: ``moved`` maps dead-letter ids to their new stream ids;
    ``missing`` dead-letter ids were no longer there (deleted, or replayed by another call)."""

    moved: dict[str, str]
    missing: list[str]


async def replay_dead_letters(
    redis: RedisClient, keys: StreamKeys, letters: Sequence[tuple[str, dict[str, str]]]
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
        redis, PRODUCER_LIBRARY, "FCALL", "ingest_replay", 2, keys.stream, keys.dead_letter, *args
    )
    pairs = [item.decode() for item in moved]
    return Replayed(dict(zip(pairs[::2], pairs[1::2], strict=True)), [m.decode() for m in missing])


class Admitted(Base):
    """What ``ingest_admit`` did: the registry's counts after the call (series, metric names,
    the key's series) and a verdict per series asked about (:data:`ADMITTED` or the cap)."""

    series: int
    metrics: int
    client_series: int
    verdicts: list[int]


# ingest_admit's verdicts (lua/producer.lua).
ADMITTED, OVER_SERIES, OVER_METRICS, OVER_CLIENT = 0, 1, 2, 3


async def admit_series(
    redis: RedisClient,
    registry: Sequence[str],
    caps: tuple[int, int, int],
    pairs: Sequence[tuple[str, str]],
    *,
    whole: bool,
) -> Admitted:
    """Admit each (metric, series member) of ``pairs`` under ``caps`` (series, metric names,
    the key's series; 0 = none), atomically. ``registry``: the series set, the metric-names
    set, and optionally the key's series set (one hash slot). ``whole``: all or nothing."""
    args: list[EncodableT] = [*caps, "all" if whole else "each"]
    for metric, member in pairs:
        args += (metric, member)
    reply = await fcall(
        redis, PRODUCER_LIBRARY, "FCALL", "ingest_admit", len(registry), *registry, *args
    )
    return Admitted(reply[0], reply[1], reply[2], reply[3:])


async def release_consumer(redis: RedisClient, keys: StreamKeys, group: str, consumer: str) -> bool:
    """Delete ``consumer`` from ``group`` if it holds no pending entry; True if deleted."""
    deleted = await fcall(
        redis,
        PRODUCER_LIBRARY,
        "FCALL",
        "ingest_release_consumer",
        1,
        keys.stream,
        group,
        consumer,
    )
    return bool(deleted)


async def hold_lease(redis: RedisClient, lease: str, owner: str, ttl_ms: int) -> bool:
    """Take the lease if free or extend it if ``owner`` holds it; True if ``owner`` holds it."""
    held = await fcall(
        redis, WORKER_LIBRARY, "FCALL", "ingest_lease", 1, lease, "hold", owner, ttl_ms
    )
    return bool(held)


async def release_lease(redis: RedisClient, lease: str, owner: str) -> bool:
    """Delete the lease if ``owner`` holds it; True if it did."""
    released = await fcall(
        redis, WORKER_LIBRARY, "FCALL", "ingest_lease", 1, lease, "release", owner, 0
    )
    return bool(released)


async def forget_consumers(
    redis: RedisClient, keys: StreamKeys, group: str, idle_ms: int, own: str = ""
) -> list[str]:
    """Delete the group's consumers holding nothing pending that were idle past ``idle_ms``,
    and ``own`` if it holds nothing; the names deleted."""
    deleted = await fcall(
        redis,
        WORKER_LIBRARY,
        "FCALL",
        "ingest_forget_consumers",
        1,
        keys.stream,
        group,
        idle_ms,
        own,
    )
    return [name.decode() for name in deleted]
