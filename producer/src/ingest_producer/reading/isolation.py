"""Read isolation: readers share Redis and the event loop with ingest, so heavy reads are
coalesced, cached for a moment and bounded, and a busy dashboard cannot slow ingest down.

- **Single flight**: identical queries in flight in one process share one computation.
- **A short cache in Redis** (``INGEST_READ_CACHE_MS``; 0 = off), shared by every producer
  process: the encoded answer under one key (:meth:`Keys.read_cache`) with a PX expiry. A
  Redis user that may not GET/SET (the read-only dashboard user) turns it off, logged once.
- **Bounded reads**: at most ``INGEST_READ_CONCURRENCY`` Redis-heavy reads run at once per
  process; one waits up to :data:`QUEUE_WAIT_S` for a slot, then gets a 503 with
  ``Retry-After`` (:class:`ReadsBusyError`). Cache hits and joined queries take no slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from importlib.metadata import version
from typing import TYPE_CHECKING, TypeVar

import structlog
from litestar import MediaType, Response
from litestar.openapi.datastructures import ResponseSpec
from redis.exceptions import NoPermissionError

from ingest_producer import metrics
from ingest_producer.errors import error_responses
from ingest_producer.models import ErrorBody
from ingest_shared.exceptions import ReadsBusyError
from ingest_shared.redis_client import call
from ingest_shared.schema import JSON_ENCODER

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    import msgspec

    from ingest_shared.keys import Keys
    from ingest_shared.redis_client import RedisClient
    from ingest_shared.settings import Settings

T = TypeVar("T")
# Answers a process keeps in memory besides the shared cache (distinct queries, not bytes:
# each expires with the cache).
LOCAL_ANSWERS = 256
# Reads a process may start at once after a quiet moment (in seconds of INGEST_READ_RATE),
# and how long a read waits for its turn before its 503.
BURST_S = 0.1
PACE_WAIT_S = 2.0
# An answer covering a span lives at least 1/2880 of it (see answer_lifetime).
SPAN_PER_LIFETIME = 2_880
# How long a read waits for a slot before its 503: long enough for a cheap query ahead of it
# to finish, short enough that a client retrying after Retry-After is not held meanwhile.
QUEUE_WAIT_S = 0.1
_BUSY = (
    "Redis is unreachable or too slow, or INGEST_READ_CONCURRENCY Redis-heavy read queries "
    f"were in flight in this process and none finished within {QUEUE_WAIT_S * 1000:.0f} ms; "
    "retry after `Retry-After` seconds"
)
# What a 200 of a shared route says in the OpenAPI document (Litestar's own wording).
_OK = "Request fulfilled, document follows"
# Part of every cache key: processes of two releases (a rolling deploy) never share answers
# whose shape may differ.
_RELEASE = version("ingest-producer")

logger = structlog.get_logger(__name__)


def read_responses(*status_codes: int) -> dict[int, ResponseSpec]:
    """The error responses of a read route bounded by :meth:`ReadGuard.limited` (its 503 says
    why a read may be refused)."""
    responses = error_responses(*status_codes)
    responses[503] = ResponseSpec(ErrorBody, description=_BUSY, generate_examples=False)
    return responses


def shared_responses(model: type[msgspec.Struct], *status_codes: int) -> dict[int, ResponseSpec]:
    """The OpenAPI responses of a route answered by :meth:`ReadGuard.shared`: ``model`` as
    its 200 (the handler returns the encoded bytes) and the given errors."""
    return {
        200: ResponseSpec(model, description=_OK, generate_examples=False),
        **read_responses(*status_codes),
    }


def json_answer(body: bytes) -> Response[bytes]:
    """An encoded answer as the response."""
    return Response(body, media_type=MediaType.JSON)


def answer_lifetime(cache_ms: int, span_ms: int, route_ms: int = 0) -> int:
    """How long an answer covering ``span_ms`` is served again: INGEST_READ_CACHE_MS, a
    2,880th of its span (30 s for 24 h; a second for an hour), or what its route allows
    (``route_ms``), whichever is longest. A 24 h range of 1,000 devices holds Redis for tens
    of milliseconds, which writes wait behind: recomputed each second, it halved ingest."""
    if not cache_ms:
        return 0
    return max(cache_ms, span_ms // SPAN_PER_LIFETIME, route_ms)


def query_digest(route: str, query: Sequence[object]) -> str:
    """A hash of everything that changes a route's answer: the release, the route and its
    normalized query parameters (msgspec-encodable)."""
    text = JSON_ENCODER.encode([_RELEASE, route, list(query)])
    return hashlib.blake2b(text, digest_size=16).hexdigest()


class ReadGuard:
    """One per app (per process): the slots, the queries in flight and the cache."""

    def __init__(
        self, redis: RedisClient, keys: Keys, *, concurrency: int, cache_ms: int, rate: int = 0
    ):
        self._redis = redis
        self._keys = keys
        self._limit = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._cache_ms = cache_ms
        self._rate = rate
        self._next_start = 0.0  # monotonic time the next read may start (see paced)
        self._flights: dict[str, asyncio.Future[bytes]] = {}
        self._local: dict[str, tuple[float, bytes]] = {}  # digest -> (expires, body)

    @classmethod
    def of(cls, settings: Settings, redis: RedisClient) -> ReadGuard:
        """The guard ``settings`` describe (INGEST_READ_CONCURRENCY, INGEST_READ_CACHE_MS)."""
        return cls(
            redis,
            settings.keys,
            concurrency=settings.read_concurrency,
            cache_ms=settings.read_cache_ms,
            rate=settings.read_rate,
        )

    async def paced(self, route: str) -> None:
        """Wait for this read's turn: reads start at most INGEST_READ_RATE a second (with a
        burst of :data:`BURST_S` of them), so readers looping as fast as answers come take a
        bounded share of the process that ingest shares; :class:`ReadsBusyError` when the turn
        is more than :data:`PACE_WAIT_S` away. Waiting costs nothing: a cached answer costs
        the HTTP work of sending it, and 3,000 of them a second took a quarter of ingest."""
        if not self._rate:
            return
        now = time.monotonic()
        start = max(self._next_start, now - BURST_S)
        if start - now > PACE_WAIT_S:
            metrics.READS_REJECTED.labels(route).inc()
            raise ReadsBusyError(self._rate, round(PACE_WAIT_S * 1000), rate=True)
        self._next_start = start + 1 / self._rate
        if start > now:
            await asyncio.sleep(start - now)

    async def limited(self, route: str, read: Callable[[], Awaitable[T]]) -> T:
        """``read()`` in one of the process's read slots; :class:`ReadsBusyError` when none
        frees within :data:`QUEUE_WAIT_S`."""
        try:
            async with asyncio.timeout(QUEUE_WAIT_S):
                await self._slots.acquire()
        except TimeoutError:
            metrics.READS_REJECTED.labels(route).inc()
            raise ReadsBusyError(self._limit, round(QUEUE_WAIT_S * 1000)) from None
        try:
            return await read()
        finally:
            self._slots.release()

    async def shared(
        self,
        route: str,
        query: Sequence[object],
        read: Callable[[], Awaitable[msgspec.Struct]],
        *,
        span_ms: int = 0,
        lifetime_ms: int = 0,
    ) -> bytes:
        """The encoded answer of ``read()``: joined with an identical query in flight in this
        process, else from the cache, else computed in a slot (and cached). ``query``: the
        normalized parameters, everything besides the route that changes the answer;
        ``span_ms``: the time the answer covers (see :func:`answer_lifetime`);
        ``lifetime_ms``: how long the route's answer may be served again, if longer."""
        await self.paced(route)
        digest = query_digest(route, query)
        flight = self._flights.get(digest)
        if flight is None:
            lifetime = answer_lifetime(self._cache_ms, span_ms, lifetime_ms)
            flight = asyncio.ensure_future(self._cached(route, digest, read, lifetime))
            self._flights[digest] = flight
            flight.add_done_callback(lambda done: self._landed(digest, done))
        else:
            metrics.READ_CACHE.labels(route, "joined").inc()
        # A client that goes away does not cancel what the others are waiting for.
        return await asyncio.shield(flight)

    def _landed(self, digest: str, flight: asyncio.Future[bytes]) -> None:
        del self._flights[digest]
        if not flight.cancelled():
            flight.exception()  # retrieved: its waiters (if any are left) raise it

    async def _cached(
        self,
        route: str,
        digest: str,
        read: Callable[[], Awaitable[msgspec.Struct]],
        lifetime: int,
    ) -> bytes:
        key = self._keys.read_cache(route, digest)
        if self._cache_ms:
            # This process's copy first: a hit then costs Redis nothing (a dashboard's charts
            # are megabytes, and a GET of them holds Redis as long as a write batch).
            held = self._local.get(digest)
            if held is not None and held[0] > time.monotonic():
                metrics.READ_CACHE.labels(route, "hit").inc()
                return held[1]
            found = await self._cache_call("GET", key)
            if isinstance(found, bytes):
                metrics.READ_CACHE.labels(route, "hit").inc()
                self._hold(digest, found, lifetime)
                return found
        metrics.READ_CACHE.labels(route, "miss").inc()
        answer = await self.limited(route, read)
        body = JSON_ENCODER.encode(answer)
        if self._cache_ms:
            self._hold(digest, body, lifetime)
            await self._cache_call("SET", key, body, "PX", lifetime)
        return body

    def _hold(self, digest: str, body: bytes, lifetime: int) -> None:
        """Keep ``body`` in this process for ``lifetime`` ms (bounded: cleared when full; a
        copy found in Redis may be that much older, never more than twice as old)."""
        if len(self._local) >= LOCAL_ANSWERS:
            self._local.clear()
        self._local[digest] = (time.monotonic() + lifetime / 1000, body)

    async def _cache_call(self, *args: str | bytes | int) -> object:
        """A cache command; a Redis user not allowed it turns the cache off (the reads work
        without it)."""
        try:
            return await call(self._redis, *args)
        except NoPermissionError as exc:
            if self._cache_ms:
                self._cache_ms = 0
                logger.warning(
                    "read_cache_disabled",
                    error=str(exc),
                    hint="the Redis user needs GET and SET on INGEST_KEY_PREFIX read-cache:*",
                )
            return None
