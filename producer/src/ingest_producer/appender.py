"""Coalescing appender: the requests of one event-loop turn reach Redis in one FCALL.

Each accepted event is still one XADD with the tutorial's fields, but the XADDs run inside the
``ingest_append`` Redis Function (``ingest_shared.functions``): every request that reaches
:meth:`EventAppender.append` in the same event-loop turn joins one batch, sent on the next
turn. No timer, so a lone request waits for nothing. redis-py spends ~50 us of CPU per
command; one FCALL for a batch of 30 costs ~5 us per event, which is most of the difference
between this route and a route that only decodes its body.

Each request is one *segment* of the call, with its own idempotency key and rate limit, and is
accepted or refused as a whole; consecutive unguarded requests share one segment. With
``INGEST_DURABILITY`` set, a ``WAITAOF``/``WAIT`` follows the FCALL in the same pipeline: one
wait per batch, not per request.

Delivery is at least once: if the call fails after Redis ran it (a timeout), or the
durability wait is not confirmed, the events may be in the stream although every request of
the batch gets a 503, and a client retry (without an Idempotency-Key) enqueues them again.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

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
from ingest_shared.schema import Base

if TYPE_CHECKING:
    from redis.typing import EncodableT

    from ingest_shared.functions import Idempotency, RateLimit
    from ingest_shared.redis_client import RedisClient
    from ingest_shared.schema import EventOut
    from ingest_shared.settings import Settings

# Events per FCALL before a batch is sent without waiting for the turn to end: bounds the
# arguments and the time the script holds the server (~1 ms). One larger request is still
# sent whole: a request is atomic.
MAX_BATCH_EVENTS = 512


class NotDurable(Base):
    """Appended (or a repeat), but the durability wait did not confirm it: answer 503."""

    detail: str


AppendResult = SegmentReply | NotDurable

# One request waiting for the next call: its events, guards and where its result goes.
_Waiting = tuple[
    "list[EventOut]", "Idempotency | None", "RateLimit | None", "asyncio.Future[AppendResult]"
]


class EventAppender:
    """Appends events to the stream, coalescing concurrent requests into one round trip."""

    def __init__(
        self, redis: RedisClient, settings: Settings, *, max_batch_events: int = MAX_BATCH_EVENTS
    ) -> None:
        self._redis = redis
        self._keys = settings.keys
        self._max_batch_events = max_batch_events
        self._wait = DurabilityWait.of(settings)
        self._waiting: list[_Waiting] = []
        self._waiting_events = 0
        self._sending: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        """Load the Redis Function library (also done on demand when Redis lost it)."""
        await load_library(self._redis, PRODUCER_LIBRARY)

    async def append(
        self,
        events: list[EventOut],
        idempotency: Idempotency | None = None,
        rate_limit: RateLimit | None = None,
    ) -> AppendResult:
        """Append ``events`` (in order, all or none) under the given guards.

        Returns what happened to them; Redis errors propagate.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AppendResult] = loop.create_future()
        self._waiting.append((events, idempotency, rate_limit, future))
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
        # Consecutive unguarded requests share a segment; ``owners`` maps segments to requests.
        segments: list[Segment] = []
        owners: list[list[tuple[asyncio.Future[AppendResult], int]]] = []
        shared: list[EventOut] | None = None
        for events, idempotency, rate_limit, future in batch:
            if idempotency is None and rate_limit is None:
                if shared is None:
                    shared = []
                    segments.append(Segment(shared))
                    owners.append([])
                shared += events
            else:
                shared = None
                segments.append(Segment(events, idempotency, rate_limit))
                owners.append([])
            owners[-1].append((future, len(events)))
        try:
            replies, problem = await self._call(append_command(self._keys, segments))
        except Exception as exc:  # handed to every waiting request, which reports it
            error = exc
            if _sent_before_failing(exc):
                error = OutcomeUnknownError(str(exc))
                error.__cause__ = exc
            for *_, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for reply, requests in zip(replies, owners, strict=True):
            _settle(reply, requests, problem)

    async def _call(self, command: list[EncodableT]) -> tuple[list[SegmentReply], str | None]:
        """Run the FCALL (and the durability wait); the replies and why they are not durable."""
        if self._wait is None:
            reply = await fcall(self._redis, PRODUCER_LIBRARY, *command)
            return parse_append_reply(reply), None
        try:
            reply, waited = await self._pipeline(command)
        except ResponseError as exc:
            if NO_FUNCTION not in str(exc):
                raise
            await self.load()
            reply, waited = await self._pipeline(command)
        return parse_append_reply(reply), self._wait.problem(waited)

    async def _pipeline(self, command: list[EncodableT]) -> tuple[list[RawSegmentReply], object]:
        """The FCALL and the wait in one round trip; the wait's error is returned, not raised."""
        assert self._wait is not None
        pipe = self._redis.pipeline(transaction=False)
        pipe.execute_command(*command)
        pipe.execute_command(*self._wait.command)
        reply, waited = await pipe.execute(raise_on_error=False)
        if isinstance(reply, Exception):
            raise reply
        return reply, waited


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


def _settle(
    reply: SegmentReply,
    requests: list[tuple[asyncio.Future[AppendResult], int]],
    problem: str | None,
) -> None:
    """Hand each request of one segment its own result."""
    result: AppendResult = reply
    if problem is not None and isinstance(reply, Appended | Duplicate):
        result = NotDurable(problem)
    if len(requests) == 1 or not isinstance(result, Appended):
        for future, _ in requests:
            if not future.done():  # a cancelled request
                future.set_result(result)
        return
    ids, start = result.ids, 0
    for future, count in requests:
        if not future.done():
            future.set_result(Appended(ids[start : start + count]))
        start += count
