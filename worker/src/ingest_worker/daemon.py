"""The worker loop: set up, drain this consumer's own pending entries, then consume and reclaim.

Every Redis step goes through :meth:`Worker._attempt`, which tells three cases apart:
transient failures back off (capped, exponential) and repeat the same step, so a batch is
retried with nothing acked; unexpected errors are logged with their traceback and the step is
given up after a pause (a batch stays pending, is reclaimed later and counts a delivery, so a
batch that always fails ends in the dead-letter stream instead of stalling every worker);
configuration errors (no TimeSeries, group deleted, refused credentials) end the run.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import structlog
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from ingest_shared.exceptions import ConfigurationError, TransientStoreError
from ingest_shared.functions import load_functions, trim_stream
from ingest_shared.redis_client import call
from ingest_shared.streams import ensure_group, is_transient
from ingest_shared.timeseries import check_timeseries
from ingest_worker.backoff import Backoff
from ingest_worker.reclaim import Reclaimer, over_delivered
from ingest_worker.stats import Throughput

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from redis.asyncio import Redis

    from ingest_shared.processor import BatchProcessor, BatchResult
    from ingest_shared.settings import Settings
    from ingest_shared.streams import Entry

# After an error nobody anticipated: long enough not to flood the log, short enough to recover.
UNEXPECTED_ERROR_DELAY_S = 5.0
# Error codes that mean the deployment, not the moment, is wrong.
_FATAL_CODES = ("NOGROUP", "WRONGTYPE")

# XREADGROUP on one stream as redis-py parses it: [[stream, [(id, fields), ...]]], or [].
ReadReply: TypeAlias = list[list[Any]]

T = TypeVar("T")
log = structlog.get_logger("ingest_worker")


class Worker:
    """One consumer of the group: ``await run()`` until ``stop()`` is called."""

    def __init__(self, redis: Redis, processor: BatchProcessor, settings: Settings) -> None:
        self._redis = redis
        self._processor = processor
        self._settings = settings
        self._stream = settings.keys.stream
        self._group = settings.consumer_group
        self._consumer = settings.consumer_name
        self._reclaimer = Reclaimer(redis, settings)
        self._backoff = Backoff()
        self._stats = Throughput()
        self._next_claim_at = 0.0  # claim at once: a dead consumer's entries may be waiting
        self._next_trim_at = 0.0
        self.stop_requested = asyncio.Event()

    def stop(self) -> None:
        """Ask :meth:`run` to finish the batch in hand and return (safe in a signal handler)."""
        self.stop_requested.set()

    async def run(self) -> None:
        """Set up the group, drain own pending entries, then consume until :meth:`stop`.

        Raises ConfigurationError when the deployment cannot work.
        """
        try:
            if not await self._set_up():
                return
            await self._drain_own_pending()
            while not self.stop_requested.is_set():
                await self._step()
                self._summarize_if_due()
        finally:
            log.info("worker_stopped", **self._stats.totals())

    async def _set_up(self) -> bool:
        """Create the group and check TimeSeries, waiting for Redis; False if stopped first."""
        while not self.stop_requested.is_set():
            created = await self._attempt("startup", self._create_group)
            if created is not None:
                log.info(
                    "worker_started",
                    stream=self._stream,
                    group=self._group,
                    group_created=created,
                    batch_size=self._settings.batch_size,
                )
                return True
        return False

    async def _create_group(self) -> bool:
        created = await ensure_group(self._redis, self._stream, self._group)
        await check_timeseries(self._redis)
        await load_functions(self._redis)
        return created

    async def _drain_own_pending(self) -> None:
        """Process what this consumer name read but never acked (a restarted container)."""
        cursor = b"0"
        while not self.stop_requested.is_set():
            read = await self._attempt("read_own_pending", partial(self._read_own, cursor))
            if read is None:
                continue
            entries, forced = read
            if not entries:
                return
            await self._handle("own_pending", entries, forced)
            self._summarize_if_due()
            cursor = entries[-1][0]

    async def _read_own(self, cursor: bytes) -> tuple[list[Entry], dict[bytes, str]]:
        # Reading with an id returns our pending entries after it (and counts a delivery);
        # entries deleted since come back with no fields and are only acked.
        entries = await self._read(cursor)
        return entries, await over_delivered(self._redis, self._settings, entries)

    async def _step(self) -> None:
        """One reclaim if it is due, then one bounded read of new entries."""
        if time.monotonic() >= self._next_claim_at:
            claimed = await self._attempt("reclaim", self._reclaimer.claim)
            more = claimed is not None and claimed.more
            interval_s = 0.0 if more else self._settings.claim_interval_ms / 1000
            self._next_claim_at = time.monotonic() + interval_s
            if claimed is not None and claimed.entries:
                await self._handle("reclaimed", claimed.entries, claimed.forced)
            if self.stop_requested.is_set():
                return
        if time.monotonic() >= self._next_trim_at:
            self._next_trim_at = time.monotonic() + self._settings.trim_interval_ms / 1000
            removed = await self._attempt("trim", self._trim)
            if removed:
                log.debug("stream_trimmed", removed=removed)
        entries = await self._attempt("read", self._read_new)
        if entries:
            await self._handle("new", entries)

    async def _trim(self) -> int:
        """Drop entries every group is done with (never a pending or undelivered one)."""
        return await trim_stream(self._redis, self._settings.keys, self._settings.stream_keep)

    async def _read_new(self) -> list[Entry]:
        return await self._read(b">", self._settings.block_ms)

    async def _read(self, after: bytes, block_ms: int | None = None) -> list[Entry]:
        """One XREADGROUP of up to a batch; ``after`` is ``>`` (new) or an id (own pending)."""
        block = () if block_ms is None else ("BLOCK", block_ms)
        reply: ReadReply = await call(
            self._redis,
            "XREADGROUP",
            "GROUP",
            self._group,
            self._consumer,
            "COUNT",
            self._settings.batch_size,
            *block,
            "STREAMS",
            self._stream,
            after,
        )
        entries: list[Entry] = reply[0][1] if reply else []
        return entries

    async def _handle(
        self, origin: str, entries: list[Entry], forced: Mapping[bytes, str] | None = None
    ) -> None:
        """Process one batch; on giving up, its entries stay pending for a later reclaim."""
        started = time.perf_counter()
        process = partial(self._processor.process, entries, self._consumer, forced)
        result: BatchResult | None = await self._attempt(origin, process)
        if result is None:
            log.warning("batch_left_pending", origin=origin, entries=len(entries))
            return
        self._stats.add(result)
        log.debug(
            "batch_processed",
            origin=origin,
            read=result.read,
            processed=result.processed,
            dead_lettered=result.dead_lettered,
            acked=result.acked,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    def _summarize_if_due(self) -> None:
        if self._stats.summary_due():
            log.info("worker_progress", **self._stats.take_summary())

    async def _attempt(self, step: str, op: Callable[[], Awaitable[T]]) -> T | None:
        """``op()``, repeated while Redis fails transiently; None once given up or stopped."""
        while True:
            try:
                result = await op()
            except Exception as exc:
                self._raise_if_fatal(exc)
                if isinstance(exc, TransientStoreError) or is_transient(exc):
                    delay = self._backoff.next_delay()
                    log.warning("redis_unavailable", step=step, error=str(exc), retry_in_s=delay)
                    if await self._pause(delay):
                        continue
                    return None
                log.exception("unexpected_error", step=step, retry_in_s=UNEXPECTED_ERROR_DELAY_S)
                await self._pause(UNEXPECTED_ERROR_DELAY_S)
                return None
            self._backoff.reset()
            return result

    def _raise_if_fatal(self, exc: Exception) -> None:
        if isinstance(exc, ConfigurationError):
            raise exc
        if isinstance(exc, AuthenticationError | NoPermissionError):
            msg = f"Redis refused this worker's credentials or ACL: {exc}"
            raise ConfigurationError(msg) from exc
        if isinstance(exc, ResponseError) and str(exc).startswith(_FATAL_CODES):
            msg = (
                f"stream {self._stream!r} or its group {self._group!r} is gone or is not a "
                f"stream (deleted while running?): {exc}"
            )
            raise ConfigurationError(msg) from exc

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds``; False (at once) if a stop is requested meanwhile."""
        try:
            await asyncio.wait_for(self.stop_requested.wait(), seconds)
        except TimeoutError:
            return True
        return False
