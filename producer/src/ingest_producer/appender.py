"""Coalescing appender: the requests of one event-loop turn reach Redis in one FCALL.

Each accepted event is still one XADD with the tutorial's fields, but the XADDs run inside the
``ingest_append`` Redis Function (``ingest_shared.functions``): every request that reaches
:meth:`EventAppender.append` in the same event-loop turn joins one batch, sent on the next
turn. No timer, so a lone request waits for nothing. redis-py spends ~50 us of CPU per
command; one FCALL for a batch of 30 costs ~5 us per event, which is most of the difference
between this route and a route that only decodes its body.

Each request is one *segment* of the call, with its own idempotency key and rate limit, and is
accepted or refused as a whole; consecutive unguarded requests share one segment. With
``INGEST_DURABILITY`` set, a ``WAITAOF``/``WAIT`` follows the FCALL in the same pipeline (on
the connection of the node that took the append): one wait per batch, not per request.

With stream shards (``INGEST_STREAM_SHARDS`` > 1) a guarded request goes whole to the shard its
guards' keys live on (its client's), so its idempotency record and rate budget stay exact; an
unguarded one sends each event to its source's shard (a device's events stay in order) and gets
its ids back in input order. On a single node a turn still sends ONE FCALL whatever the number
of shards, each event naming its stream: redis-py's cost is per command and per argument
(gateway batches, 8 shards: ~6.4 us of producer CPU per event with a call per shard, ~3.8 us
with one call, as with one stream). On Redis Cluster every key of a call must share a slot: one
FCALL per shard, all at once, a request split by shard; if some of its shards appended and
another failed, the whole request MAY have been enqueued.

Delivery is at least once: if the call fails after Redis ran it (a timeout), or the
durability wait is not confirmed, the events may be in the stream although every request of
the batch gets a 503, and a client retry (without an Idempotency-Key) enqueues them again.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ingest_shared.exceptions import OutcomeUnknownError
from ingest_shared.functions import (
    NO_FUNCTION,
    PRODUCER_LIBRARY,
    Appended,
    Duplicate,
    RawSegmentReply,
    Segment,
    SegmentReply,
    append_command,
    fcall,
    load_library,
    parse_append_reply,
)
from ingest_shared.redis_client import pipeline_at
from ingest_shared.schema import Base

if TYPE_CHECKING:
    from collections.abc import Iterable

    from redis.typing import EncodableT

    from ingest_shared.functions import Idempotency, RateLimit
    from ingest_shared.keys import Shard
    from ingest_shared.redis_client import RedisClient
    from ingest_shared.schema import EventOut
    from ingest_shared.settings import Settings

# Events per FCALL before a batch is sent without waiting for the turn to end: bounds the
# arguments and the time the script holds the server (~1 ms). One larger request is still
# sent whole: a request is atomic.
MAX_BATCH_EVENTS = 512
# Sources whose shard index the appender remembers (then it forgets them all and starts over).
SOURCE_SHARD_CACHE = 100_000


class NotDurable(Base):
    """Appended (or a repeat), but the durability wait did not confirm it: answer 503."""

    detail: str


AppendResult = SegmentReply | NotDurable


class _Sink(Protocol):
    """Where one request's result goes: its future, or its part of a split request."""

    def done(self) -> bool: ...

    def set_result(self, result: AppendResult, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


# One request waiting for the next call: its events, guards, the shard its guards name (None
# unguarded, or unsharded) and where its result goes.
_Waiting = tuple[
    "list[EventOut]",
    "Idempotency | None",
    "RateLimit | None",
    "Shard | None",
    "asyncio.Future[AppendResult]",
]
# One request (or one shard's part of a split request) in a call: its events, guards, its
# stream, or one stream per event (None: all to that stream), and where its result goes.
_Request = tuple[
    "list[EventOut]", "Idempotency | None", "RateLimit | None", str, "list[str] | None", _Sink
]


class EventAppender:
    """Appends events to the stream(s), coalescing concurrent requests into one round trip."""

    def __init__(
        self, redis: RedisClient, settings: Settings, *, max_batch_events: int = MAX_BATCH_EVENTS
    ) -> None:
        self._redis = redis
        self._keys = settings.keys
        self._shards = settings.keys.shards
        self._max_batch_events = max_batch_events
        self._wait = DurabilityWait.of(settings)
        self._waiting: list[_Waiting] = []
        self._waiting_events = 0
        self._sending: set[asyncio.Task[None]] = set()
        # On a cluster each call must stay in one slot: one call per shard.
        self._call_per_shard = settings.keys.cluster and len(self._shards) > 1
        self._source_shard: dict[str, Shard] = {}

    async def load(self) -> None:
        """Load the Redis Function library (also done on demand when Redis lost it)."""
        await load_library(self._redis, PRODUCER_LIBRARY)

    async def append(
        self,
        events: list[EventOut],
        idempotency: Idempotency | None = None,
        rate_limit: RateLimit | None = None,
        shard: Shard | None = None,
    ) -> AppendResult:
        """Append ``events`` (in order, all or none) under the given guards.

        A guarded request goes to ``shard``, the one whose keys its guards name (default: the
        first); unguarded events go to their source's shard. Returns what happened to them;
        Redis errors propagate.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AppendResult] = loop.create_future()
        self._waiting.append((events, idempotency, rate_limit, shard, future))
        self._waiting_events += len(events)
        if self._waiting_events >= self._max_batch_events:
            self._flush()
        elif len(self._waiting) == 1:
            # Runs after every callback already queued: this turn's requests join the batch.
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        if not self._waiting:
            return
        batch, self._waiting, self._waiting_events = self._waiting, [], 0
        task = asyncio.create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Waiting]) -> None:
        """One call for the whole batch; on a cluster with several shards, one call per shard,
        all at once."""
        if not self._call_per_shard:
            await self._send_to(self._shards[0], self._requests(batch))
            return
        by_shard = self._by_shard(batch)
        await asyncio.gather(
            *(self._send_to(self._shards[index], requests) for index, requests in by_shard.items())
        )

    def _requests(self, batch: list[_Waiting]) -> list[_Request]:
        """The batch as the requests of one call: guarded requests whole to their guards'
        shard, each unguarded event to its source's shard."""
        shards = self._shards
        first = shards[0].stream
        if len(shards) == 1:
            return [(events, i, r, first, None, future) for events, i, r, _, future in batch]
        requests: list[_Request] = []
        for events, idempotency, rate_limit, shard, future in batch:
            if idempotency is None and rate_limit is None:
                requests.append((events, None, None, first, self._streams_of(events), future))
            else:
                stream = (shard or shards[0]).stream
                requests.append((events, idempotency, rate_limit, stream, None, future))
        return requests

    def _by_shard(self, batch: list[_Waiting]) -> dict[int, list[_Request]]:
        """The batch as one call per shard: guarded requests whole to their guards' shard,
        unguarded events each to their source's shard (a request whose events span several
        shards is split, and answered once every part is)."""
        shards = self._shards
        by_shard: dict[int, list[_Request]] = {}
        for events, idempotency, rate_limit, shard, future in batch:
            if idempotency is not None or rate_limit is not None:
                guarded = shard or shards[0]
                by_shard.setdefault(guarded.index, []).append(
                    (events, idempotency, rate_limit, guarded.stream, None, future)
                )
                continue
            parts = self._by_source(events)
            if len(parts) == 1:
                [index] = parts
                by_shard.setdefault(index, []).append(
                    (events, None, None, shards[index].stream, None, future)
                )
                continue
            split = _Split(future, len(events), len(parts))
            for index, (part, positions) in parts.items():
                by_shard.setdefault(index, []).append(
                    (part, None, None, shards[index].stream, None, split.part(positions))
                )
        return by_shard

    def _streams_of(self, events: list[EventOut]) -> list[str]:
        """The stream of each event's source shard."""
        known, learn = self._source_shard.get, self._learn_shard
        return [(known(e.source) or learn(e.source)).stream for e in events]

    def _by_source(self, events: list[EventOut]) -> dict[int, tuple[list[EventOut], list[int]]]:
        """``events`` by the index of their source's shard, with their positions in the list."""
        known, learn = self._source_shard.get, self._learn_shard
        parts: dict[int, tuple[list[EventOut], list[int]]] = {}
        for position, event in enumerate(events):
            index = (known(event.source) or learn(event.source)).index
            part = parts.get(index)
            if part is None:
                parts[index] = part = ([], [])
            part[0].append(event)
            part[1].append(position)
        return parts

    def _learn_shard(self, source: str) -> Shard:
        """:meth:`Keys.shard_of_source`, remembered: looked up per event, a dict costs ~0.04 us
        and the hash ~0.17 us. Emptied when full."""
        known = self._source_shard
        if len(known) >= SOURCE_SHARD_CACHE:
            known.clear()
        known[source] = shard = self._keys.shard_of_source(source)
        return shard

    async def _send_to(self, shard: Shard, requests: list[_Request]) -> None:
        """One FCALL for ``requests`` (on a cluster, all on ``shard``, whose node runs the call
        and the durability wait); each gets its result or the call's error."""
        segments, owners = _segments(requests)
        try:
            replies, problem = await self._call(shard, append_command(shard, segments))
        except Exception as exc:  # handed to every waiting request, which reports it
            error = exc
            if _sent_before_failing(exc):
                error = OutcomeUnknownError(str(exc))
                error.__cause__ = exc
            for *_, sink in requests:
                if not sink.done():
                    sink.set_exception(error)
            return
        for reply, owner in zip(replies, owners, strict=True):
            _settle(reply, owner, problem)

    async def _call(
        self, shard: Shard, command: list[EncodableT]
    ) -> tuple[list[SegmentReply], str | None]:
        """Run the FCALL (and the durability wait); the replies and why they are not durable."""
        if self._wait is None:
            reply = await fcall(self._redis, PRODUCER_LIBRARY, *command)
            return parse_append_reply(reply), None
        try:
            reply, waited = await self._pipeline(shard, command)
        except ResponseError as exc:
            if NO_FUNCTION not in str(exc):
                raise
            await self.load()
            reply, waited = await self._pipeline(shard, command)
        return parse_append_reply(reply), self._wait.problem(waited)

    async def _pipeline(
        self, shard: Shard, command: list[EncodableT]
    ) -> tuple[list[RawSegmentReply], object]:
        """The FCALL and the wait in one round trip on the connection of the node holding the
        shard; the wait's error is returned, not raised."""
        assert self._wait is not None
        reply, waited = await pipeline_at(self._redis, shard.stream, [command, self._wait.command])
        if isinstance(reply, Exception):
            raise reply
        return reply, waited


def _segments(
    requests: Iterable[_Request],
) -> tuple[list[Segment], list[list[tuple[_Sink, int]]]]:
    """The segments of one call, and which requests (with their event counts) own each:
    consecutive unguarded requests share one segment (if each event names its stream, or all
    go to the same one)."""
    segments: list[Segment] = []
    owners: list[list[tuple[_Sink, int]]] = []
    shared: Segment | None = None
    shared_streams: list[str] | None = None
    for events, idempotency, rate_limit, stream, streams, sink in requests:
        if idempotency is None and rate_limit is None:
            if (
                shared is None
                or shared.stream != stream
                or (shared_streams is None) != (streams is None)
            ):
                shared_streams = None if streams is None else []
                shared = Segment([], stream=stream, streams=shared_streams)
                segments.append(shared)
                owners.append([])
            shared.events += events
            if shared_streams is not None and streams is not None:
                shared_streams += streams
        else:
            shared = None
            segments.append(Segment(events, idempotency, rate_limit, stream, streams))
            owners.append([])
        owners[-1].append((sink, len(events)))
    return segments, owners


class _Split:
    """An unguarded request whose events went to several shards: its result once every part
    has one. All appended: the ids in input order. Some appended (or maybe) and another failed:
    the request MAY have been enqueued. None appended: the first part's error."""

    def __init__(self, future: asyncio.Future[AppendResult], size: int, parts: int) -> None:
        self._future = future
        self._ids: list[bytes] = [b""] * size
        self._left = parts
        self._maybe_appended = 0
        self._not_durable: str | None = None
        self._error: BaseException | None = None

    def part(self, positions: list[int]) -> _Part:
        """The sink of the events at ``positions`` of the request."""
        return _Part(self, positions)

    def settle(self, positions: list[int], result: AppendResult) -> None:
        if isinstance(result, Appended):
            for position, entry_id in zip(positions, result.ids, strict=True):
                self._ids[position] = entry_id
        elif isinstance(result, NotDurable):
            self._not_durable = result.detail
        else:  # unguarded events are never refused: a bug, reported as a failure
            self._error = self._error or RuntimeError(f"unexpected append result {result!r}")
        self._maybe_appended += 1
        self._finish()

    def fail(self, error: BaseException) -> None:
        if isinstance(error, OutcomeUnknownError):
            self._maybe_appended += 1
        self._error = self._error or error
        self._finish()

    def _finish(self) -> None:
        self._left -= 1
        if self._left or self._future.done():
            return
        error = self._error
        if error is None:
            durable = self._not_durable is None
            self._future.set_result(
                Appended(self._ids) if durable else NotDurable(self._not_durable or "")
            )
        elif not self._maybe_appended:
            self._future.set_exception(error)
        else:
            # Not chained: the 503 must not read as a refusal of the whole request.
            self._future.set_exception(
                OutcomeUnknownError(
                    f"{self._maybe_appended} shard(s) appended part of the request (or may "
                    f"have), another failed: {error}"
                )
            )


class _Part:
    """One shard's part of a :class:`_Split` request, settled like a request's future."""

    def __init__(self, split: _Split, positions: list[int]) -> None:
        self._split = split
        self._positions = positions

    def done(self) -> bool:
        return False  # the request's own future is checked once every part is in

    def set_result(self, result: AppendResult, /) -> None:
        self._split.settle(self._positions, result)

    def set_exception(self, exception: BaseException, /) -> None:
        self._split.fail(exception)


class DurabilityWait:
    """``WAITAOF 1 0 <timeout>`` or ``WAIT <n> <timeout>``, and what its reply means."""

    def __init__(self, name: str, needed: int, timeout_ms: int) -> None:
        self.name = name
        self.command: tuple[EncodableT, ...] = (
            (name, 1, 0, timeout_ms) if name == "WAITAOF" else (name, needed, timeout_ms)
        )
        self._needed = needed
        self._timeout_ms = timeout_ms

    @classmethod
    def of(cls, settings: Settings) -> DurabilityWait | None:
        """The wait INGEST_DURABILITY asks for; None for ``none``."""
        timeout = settings.durability_timeout_ms
        if settings.durability == "aof":
            return cls("WAITAOF", 1, timeout)
        if settings.durability == "replicas":
            return cls("WAIT", settings.durability_replicas, timeout)
        return None

    def problem(self, reply: object) -> str | None:
        """None if ``reply`` confirms the write, else a sentence saying why it does not."""
        name = self.name
        if isinstance(reply, NoPermissionError):
            return f"{name} was refused by this user's ACL ({reply})"
        if isinstance(reply, Exception):
            hint = " (WAITAOF needs appendonly yes on the server)" if name == "WAITAOF" else ""
            return f"{name} failed: {reply}{hint}"
        # WAITAOF answers [local fsyncs, replica fsyncs]; WAIT the number of replicas.
        confirmed = reply[0] if isinstance(reply, list) else reply
        if isinstance(confirmed, int) and confirmed >= self._needed:
            return None
        what = "the local AOF fsync" if name == "WAITAOF" else f"{self._needed} replica(s)"
        return f"{what} did not confirm the write within {self._timeout_ms} ms"


def _sent_before_failing(error: Exception) -> bool:
    """True when the call failed after it may have reached Redis (a reply timed out or the
    connection dropped mid-call); False when it failed to connect, so nothing ran."""
    if not isinstance(error, RedisTimeoutError | RedisConnectionError):
        return False
    # redis-py words connection-phase failures "Error N connecting to ..." / "Timeout
    # connecting to server"; nothing was sent on such a connection.
    return "connecting to" not in str(error)


def _settle(reply: SegmentReply, requests: list[tuple[_Sink, int]], problem: str | None) -> None:
    """Hand each request of one segment its own result."""
    result: AppendResult = reply
    if problem is not None and isinstance(reply, Appended | Duplicate):
        result = NotDurable(problem)
    if len(requests) == 1 or not isinstance(result, Appended):
        for sink, _ in requests:
            if not sink.done():  # a cancelled request
                sink.set_result(result)
        return
    ids, start = result.ids, 0
    for sink, count in requests:
        if not sink.done():
            sink.set_result(Appended(ids[start : start + count]))
        start += count
