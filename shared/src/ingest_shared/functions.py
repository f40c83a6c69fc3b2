"""The server-side append function: a whole batch of events in one round trip.

redis-py spends tens of microseconds of Python per pipelined command; one FCALL carrying every
event's fields costs a fraction of that per event, and lets the idempotency check, the rate
limit and the XADDs happen atomically.
"""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ingest_shared import keys as k
from ingest_shared.redis_client import call
from ingest_shared.schema import Base

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis
    from redis.typing import EncodableT

    from ingest_shared.keys import Keys
    from ingest_shared.schema import EventOut

LIBRARY_CODE = files(__package__).joinpath("lua/telemetry_ingest.lua").read_text()
# What Redis answers when the library is not loaded (a fresh, restarted or flushed server).
NO_FUNCTION = "Function not found"
_FIELDS = (k.FIELD_SOURCE, k.FIELD_METRIC, k.FIELD_VALUE, k.FIELD_OCCURRED_AT)


class Idempotency(Base):
    """Guard an append with a stored response, keyed by a digest of the client's key."""

    key: str
    ttl_ms: int
    body_hash: str
    echo: bytes


class RateLimit(Base):
    """Count this call's events against ``limit`` per ``window_ms`` on ``key``."""

    key: str
    limit: int
    window_ms: int


class Appended(Base):
    ids: list[bytes]


class Duplicate(Base):
    body_hash: bytes
    ids: list[bytes]
    echo: bytes


class RateLimited(Base):
    retry_after_ms: int


AppendReply = Appended | Duplicate | RateLimited


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


def append_command(
    keys: Keys,
    events: Sequence[EventOut],
    idempotency: Idempotency | None = None,
    rate_limit: RateLimit | None = None,
) -> list[EncodableT]:
    """The FCALL arguments appending ``events`` in order (for a pipeline or :func:`call`)."""
    fcall_keys: list[EncodableT] = [keys.stream]
    args: list[EncodableT] = []
    if idempotency is None:
        args += (0, "", "")
    else:
        fcall_keys.append(idempotency.key)
        args += (idempotency.ttl_ms, idempotency.body_hash, idempotency.echo)
    if rate_limit is None:
        args += (0, 0, len(events))
    else:
        fcall_keys.append(rate_limit.key)
        args += (rate_limit.limit, rate_limit.window_ms, len(events))
    args += (len(_FIELDS), *_FIELDS)
    for event in events:
        args += (event.source, event.metric, repr(event.value), event.occurredAt)
    return ["FCALL", "ingest_append", len(fcall_keys), *fcall_keys, *args]


def parse_append_reply(reply: list[bytes | int]) -> AppendReply:
    """Turn the function's reply into one of the three outcomes."""
    tag = reply[0]
    if tag == b"ok":
        return Appended(ids=reply[1:])  # type: ignore[arg-type]
    if tag == b"dup":
        ids = reply[2]
        assert isinstance(ids, bytes)
        return Duplicate(body_hash=reply[1], ids=ids.split(b","), echo=reply[3])  # type: ignore[arg-type]
    return RateLimited(retry_after_ms=int(reply[1]))


async def trim_stream(redis: Redis, keys: Keys, keep: int) -> int:
    """XTRIM MINID to what every group has finished with, keeping ``keep`` newest; returns
    the number of entries removed."""
    removed, _ = await fcall(redis, "FCALL", "ingest_trim", 1, keys.stream, keep)
    return int(removed)


async def append_events(
    redis: Redis,
    keys: Keys,
    events: Sequence[EventOut],
    idempotency: Idempotency | None = None,
    rate_limit: RateLimit | None = None,
) -> AppendReply:
    """Append ``events`` in one round trip; see :func:`append_command`."""
    reply = await fcall(redis, *append_command(keys, events, idempotency, rate_limit))
    return parse_append_reply(reply)
