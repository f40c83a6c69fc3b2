"""Stream and consumer-group helpers both services use."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterError,
    MovedError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ingest_shared import keys as k
from ingest_shared.exceptions import ConfigurationError
from ingest_shared.redis_client import call
from ingest_shared.schema import JSON_ENCODER, format_ms

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.typing import EncodableT

    from ingest_shared.keys import Keys
    from ingest_shared.redis_client import RedisClient

# An entry as XREADGROUP/XAUTOCLAIM return it; fields is None for an entry deleted while pending.
Entry: TypeAlias = tuple[bytes, dict[bytes, bytes] | None]

# Server replies that mean "not now" rather than "never": retry them, ack nothing.
# redis-py turns most of them into their own classes and strips the code from the message
# (an OOM reply reads "command not allowed when ..."), so classes are checked, not prefixes.
_TRANSIENT_REPLIES = (
    OutOfMemoryError,
    ReadOnlyError,
    TryAgainError,
    AskError,
    ClusterError,  # ClusterDownError; and "TTL exhausted" after too many TRYAGAIN/MOVED
    SlotNotCoveredError,  # a slot with no live primary for a moment (a failover)
)
# Codes redis-py leaves in the message; the space keeps BUSYGROUP and BUSYKEY out.
_TRANSIENT_PREFIXES = ("BUSY ", "NOREPLICAS ")
# uvloop raises RuntimeError("... the handler is closed") for a write on a connection the peer
# reset; redis-py disconnects and passes it through: a connection failure like any other.
_CLOSED_TRANSPORT = "handler is closed"
TRANSIENT_ERRORS = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, OSError)


def is_transient(error: BaseException) -> bool:
    """True when ``error`` may go away by itself (network, failover, loading, memory)."""
    if isinstance(error, MovedError):
        # A routing answer from a cluster node, not an outage (MovedError subclasses AskError).
        return False
    if isinstance(error, RuntimeError) and _CLOSED_TRANSPORT in str(error):
        return True
    if isinstance(error, TRANSIENT_ERRORS + _TRANSIENT_REPLIES):
        return True
    return isinstance(error, ResponseError) and str(error).startswith(_TRANSIENT_PREFIXES)


async def ensure_group(redis: RedisClient, stream: str, group: str) -> bool:
    """Create ``group`` at ID 0 (so earlier events are not skipped), with MKSTREAM.

    Returns True if it was created; tolerates only BUSYGROUP.
    """
    try:
        await call(redis, "XGROUP", "CREATE", stream, group, "0", "MKSTREAM")
    except ResponseError as exc:
        if str(exc).startswith("BUSYGROUP"):
            return False
        raise
    return True


def dead_letter_fields(
    message_id: bytes, reason: str, fields: dict[bytes, bytes] | None, consumer: str, now: int
) -> dict[EncodableT, EncodableT]:
    """One dead-letter entry: the original id and fields (as JSON), why, who and when."""
    payload = (
        {}
        if fields is None
        else {
            key.decode(errors="replace"): value.decode(errors="replace")
            for key, value in fields.items()
        }
    )
    return {
        k.DL_MESSAGE_ID: message_id,
        k.DL_REASON: reason,
        k.DL_PAYLOAD: JSON_ENCODER.encode(payload),
        k.DL_CONSUMER: consumer,
        k.DL_FAILED_AT: format_ms(now),
    }


async def append_dead_letters(
    redis: RedisClient, key: str, letters: Sequence[dict[EncodableT, EncodableT]], maxlen: int
) -> None:
    """XADD each of ``letters`` (see :func:`dead_letter_fields`) in one round trip.

    Each append trims the stream to about ``maxlen`` entries (``MAXLEN ~``): dropping the
    oldest dead letters is the one loss the pipeline accepts, so a flood of bad events cannot
    fill Redis. Raises on the first failed append (the caller then acknowledges nothing).
    """
    pipe = redis.pipeline(transaction=False)
    for fields in letters:
        pipe.xadd(key, fields, maxlen=maxlen, approximate=True)
    await pipe.execute(raise_on_error=True)


# Bytes of an oversized entry kept in place of its fields (see bounded_fields).
OVERSIZED_PREFIX_BYTES = 1_024


def bounded_fields(
    fields: dict[bytes, bytes], max_bytes: int, prefix_bytes: int = OVERSIZED_PREFIX_BYTES
) -> dict[bytes, bytes]:
    """``fields``, or, when their names and values pass ``max_bytes`` in all (``0``: no
    bound), what the worker's read functions hand back instead (lua/worker.lua ``bounded``):
    the size, and the first ``prefix_bytes`` of the names and values joined by spaces."""
    size = sum(map(len, fields)) + sum(map(len, fields.values()))
    if not max_bytes or size <= max_bytes:
        return fields
    shown: list[bytes] = []
    used = 0
    for part in (part for pair in fields.items() for part in pair):
        if used >= prefix_bytes:
            break
        shown.append(part[: prefix_bytes - used])
        used += len(shown[-1])
    return {k.FIELD_OVERSIZED: b"%d" % size, k.FIELD_PREFIX: b" ".join(shown)}


_NO_SUCH_KEY = "no such key"


async def check_layout(redis: RedisClient, keys: Keys) -> None:
    """Record the stream layout in use the first time; raise ConfigurationError if Redis holds
    another one (the number of shards cannot change under running data: a migration).

    Releases before sharding recorded nothing: their one stream (the unsharded name) still
    holding entries no worker has finished counts as that layout."""
    layout = {"shards": str(len(keys.shards)), "cluster": "1" if keys.cluster else "0"}
    if not keys.legacy and not await redis.hgetall(keys.layout):
        unfinished = await unfinished_entries(redis, keys.stream)
        if unfinished:
            msg = (
                f"INGEST_STREAM_SHARDS={layout['shards']} but the unsharded stream "
                f"{keys.stream!r} of an earlier release still holds {unfinished} entries no "
                "worker has finished: drain it first with INGEST_STREAM_SHARDS=1 (lag and "
                "pending 0), then start with the new setting (docs/scaling.md, Upgrading from "
                "one stream)"
            )
            raise ConfigurationError(msg)
    pipe = redis.pipeline(transaction=False)
    for name, value in layout.items():
        pipe.hsetnx(keys.layout, name, value)
    pipe.hgetall(keys.layout)
    *_, stored = await pipe.execute()
    found = {name.decode(): value.decode() for name, value in stored.items()}
    if found != layout:
        msg = (
            f"INGEST_STREAM_SHARDS={layout['shards']} (cluster {layout['cluster']}) but Redis "
            f"holds the layout {found} in {keys.layout}: changing the number of shards is a "
            "migration. Drain the old streams with the old setting (lag and pending 0), then "
            f"DEL {keys.layout} and start with the new one (docs/scaling.md, Upgrading from "
            "one stream)"
        )
        raise ConfigurationError(msg)


async def unfinished_entries(redis: RedisClient, stream: str) -> int:
    """Entries of ``stream`` some group has not read or not acknowledged (every entry when it
    has no group); 0 when there is no stream at that key. Only commands every role may run."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError as exc:
        if _NO_SUCH_KEY in str(exc) or str(exc).startswith("WRONGTYPE"):
            return 0
        raise
    if not groups:
        return int(await redis.xlen(stream))
    unfinished = 0
    for group in groups:
        lag = group.get("lag")
        if lag is None:  # unknown after deletions: count what the stream holds
            lag = await redis.xlen(stream)
        unfinished = max(unfinished, int(lag) + int(group.get("pending") or 0))
    return unfinished
