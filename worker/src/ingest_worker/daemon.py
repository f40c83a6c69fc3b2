"""The worker loop: set up, drain this consumer's own pending entries, then consume and reclaim.

Every Redis step goes through :meth:`Worker._attempt`, which tells the cases apart:

* transient failures back off (capped, exponential) and repeat the same step, so a batch is
  retried with nothing acked; once Redis answers again, this consumer's own pending list is
  read again (at once and a second later) before new entries, because entries Redis handed to
  a connection that died meanwhile would otherwise wait for the next XAUTOCLAIM;
* state Redis lost and the worker can rebuild (the group or the stream gone after a restart
  without persistence, a failover to an empty replica, a FLUSHALL): the group is recreated at
  ID 0, logged at error, counted, and the step repeated: a worker that exits strands what
  arrives after;
* unexpected errors are logged with their traceback and the step is given up after a pause
  (a batch stays pending, is reclaimed later and counts a delivery, so a batch that always
  fails ends in the dead-letter stream instead of stalling every worker);
* configuration errors (no TimeSeries at start, a wrong type at the stream key, refused
  credentials or ACLs, a TLS certificate refused either way, a cluster node answering MOVED)
  end the run.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import structlog
from redis.exceptions import (
    AuthenticationError,
    MovedError,
    NoPermissionError,
    OutOfMemoryError,
    ResponseError,
)

from ingest_shared.exceptions import ConfigurationError, TransientStoreError
from ingest_shared.functions import WORKER_LIBRARY, forget_consumers, load_library, trim_stream
from ingest_shared.holdback import Held, hold_back, release
from ingest_shared.redis_client import tls_failure
from ingest_shared.schema import now_ms
from ingest_shared.streams import check_layout, ensure_group, is_transient
from ingest_shared.timeseries import check_timeseries
from ingest_worker import metrics
from ingest_worker.backoff import Backoff
from ingest_worker.monitor import Heartbeat
from ingest_worker.outage import Outage
from ingest_worker.reader import StreamReader
from ingest_worker.reclaim import Reclaimer, over_delivered
from ingest_worker.stats import Throughput

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ingest_shared.keys import Shard
    from ingest_shared.processor import BatchProcessor, BatchResult, PreparedBatch
    from ingest_shared.redis_client import RedisClient
    from ingest_shared.settings import Settings
    from ingest_shared.streams import Entry

# After an error nobody anticipated: long enough not to flood the log, short enough to recover.
UNEXPECTED_ERROR_DELAY_S = 5.0
# After Redis answers again, own pending entries are re-read this long after it (and at once):
# entries handed to a blocked read whose connection had died can appear in that moment.
PENDING_RECHECK_DELAYS_S = (0.0, 1.0)
# How often each worker removes consumers that died with nothing pending.
CONSUMER_CLEANUP_INTERVAL_S = 60.0
# Error codes that mean the deployment, not the moment, is wrong.
_FATAL_CODES = ("WRONGTYPE",)
# The stream or the group is gone (Redis restarted empty, flushed, failed over): rebuild it.
# UNBLOCKED: a blocked XREADGROUP whose stream was deleted under it.
_GROUP_GONE_CODES = ("NOGROUP", "UNBLOCKED")
# What each step sends, for error lines (redis-py's errors do not name the command).
_STEP_COMMANDS = {
    "startup": "XGROUP CREATE, TS.INFO, FUNCTION LOAD",
    "read": "XREADGROUP",
    "read_own_pending": "XREADGROUP, XPENDING",
    "reclaim": "XAUTOCLAIM, XPENDING",
    "trim": "FCALL ingest_trim",
    "cleanup": "FCALL ingest_forget_consumers",
    "new": "TS.MADD, XADD, XACK",
    "own_pending": "TS.MADD, XADD, XACK",
    "reclaimed": "TS.MADD, XADD, XACK",
}


T = TypeVar("T")
log = structlog.get_logger("ingest_worker")


class Worker:
    """One consumer of the group: ``await run()`` until ``stop()`` is called."""

    def __init__(
        self,
        redis: RedisClient,
        processor: BatchProcessor,
        settings: Settings,
        heartbeat: Heartbeat | None = None,
        shard: Shard | None = None,
        *,
        takeover_idle_ms: int | None = None,
    ) -> None:
        """One consumer of ``shard``'s stream (default: the first, the only one unsharded);
        ``takeover_idle_ms``: see :class:`~ingest_worker.reclaim.Reclaimer`."""
        self._redis = redis
        self._processor = processor
        self._settings = settings
        self._shard = shard or settings.keys.shards[0]
        self._stream = self._shard.stream
        self._group = settings.consumer_group
        self._consumer = settings.consumer_name
        self._reader = StreamReader(redis, settings, self._shard.stream)
        self._reclaimer = Reclaimer(redis, settings, self._reader, takeover_idle_ms)
        self._backoff = Backoff()
        self._stats = Throughput()
        self._next_claim_at = 0.0  # claim at once: a dead consumer's entries may be waiting
        self._next_trim_at = 0.0
        self._next_cleanup_at = time.monotonic() + CONSUMER_CLEANUP_INTERVAL_S
        self._heartbeat = heartbeat or Heartbeat()
        self._group_missing = False
        self._recoveries_in_a_row = 0
        self._disturbed = False  # a transient failure since the last successful step
        self._outage = Outage()
        self._pending_checks: list[float] = []  # monotonic times to re-read own pending
        self._batch_seq = 0
        self._prefetched: list[Entry] = []  # the next batch, read while the last was stored
        self._held = Held()  # the last batch's newest milliseconds, written with the next one
        self._in_flight: asyncio.Task[None] | None = None  # the last batch, still being stored
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
            await self._finish()
        finally:
            if self._in_flight is not None:  # cancelled: what it held stays pending
                self._in_flight.cancel()
                await asyncio.gather(self._in_flight, return_exceptions=True)
                self._in_flight = None
            log.info("worker_stopped", **self._stats.totals())

    async def _finish(self) -> None:
        """Store the work in hand (the batch in flight, what was held back, what was read
        ahead), then remove this consumer if it holds nothing."""
        await self._settle_in_flight()
        if self._held.ids:
            await self._handle("new", self._release_held())
        if self._prefetched:
            await self._handle("new", self._processor.prepare(self._prefetched))
            self._prefetched = []
        await self._forget_self()

    def _release_held(self) -> PreparedBatch:
        """What was held back, as a batch of its own; nothing is held after."""
        held, self._held = self._held, Held()
        return release(held, now_ms())

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
        await check_layout(self._redis, self._settings.keys)
        created = await ensure_group(self._redis, self._stream, self._group)
        await check_timeseries(self._redis, self._settings.keys)
        await load_library(self._redis, WORKER_LIBRARY)
        return created

    async def _drain_own_pending(self) -> None:
        """Process what this consumer name read but never acked (a restarted container)."""
        self._held = Held()  # pending too: read again below
        cursor = b"0"
        while not self.stop_requested.is_set():
            read = await self._attempt("read_own_pending", partial(self._read_own, cursor))
            if read is None:
                continue
            entries, forced = read
            if not entries:
                return
            await self._handle("own_pending", self._processor.prepare(entries, forced))
            self._summarize_if_due()
            cursor = entries[-1][0]

    async def _read_own(self, cursor: bytes) -> tuple[list[Entry], dict[bytes, str]]:
        # Reading with an id returns our pending entries after it (and counts a delivery);
        # entries deleted since come back with no fields and are only acked.
        entries = await self._reader.own_pending(cursor)
        return entries, await over_delivered(self._redis, self._settings, entries, self._stream)

    async def _step(self) -> None:
        """Own pending if a reconnect left some, one reclaim if due, one bounded read."""
        if self._pending_checks and time.monotonic() >= self._pending_checks[0]:
            self._pending_checks.pop(0)
            await self._settle_in_flight()  # its entries are pending too: not twice at once
            await self._drain_own_pending()
        if time.monotonic() >= self._next_claim_at:
            claimed = await self._attempt("reclaim", self._reclaimer.claim)
            more = claimed is not None and claimed.more
            interval_s = 0.0 if more else self._settings.claim_interval_ms / 1000
            self._next_claim_at = time.monotonic() + interval_s
            if claimed is not None and claimed.entries:
                metrics.RECLAIMED.inc(len(claimed.entries))
                batch = self._processor.prepare(claimed.entries, claimed.forced)
                await self._handle("reclaimed", batch)
            if self.stop_requested.is_set():
                return
        await self._chores()
        entries = self._prefetched or await self._attempt("read", self._read_new)
        self._prefetched = []
        if entries:
            batch, self._held = hold_back(self._processor.prepare(entries), self._held)
        elif self._held.ids:  # nothing newer arrived: write what was held back
            batch = self._release_held()
        else:
            await self._settle_in_flight()
            return
        # Two batches in flight: this one is decoded and its TS.MADD sent while Redis stores
        # the previous one, and the next is read meanwhile, so the worker and Redis work at the
        # same time instead of taking turns. Each batch is still acked only after its own
        # writes were checked; the previous one's TS.MADD left first, so samples keep their
        # order.
        previous = self._in_flight
        self._in_flight = asyncio.create_task(
            self._handle("new", batch), name="ingest-worker-batch"
        )
        prefetch = None
        if not self.stop_requested.is_set():
            prefetch = asyncio.create_task(self._prefetch(), name="ingest-worker-prefetch")
        try:
            if previous is not None:
                await previous
        except BaseException:
            if prefetch is not None:
                prefetch.cancel()  # what it read stays pending: re-read or reclaimed later
            raise
        if prefetch is not None:
            self._prefetched = await prefetch

    async def _settle_in_flight(self) -> None:
        """Wait for the batch still being stored (its errors are raised here)."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            await in_flight

    async def _prefetch(self) -> list[Entry]:
        """The next batch of new entries; on an error, none (the next step reads again)."""
        try:
            return await self._read_new()
        except Exception as exc:
            # Whatever it was, the step's own read meets it again and handles it; a reply
            # lost in transit may have delivered entries to us, so re-read own pending.
            self._disturbed = True
            log.debug("prefetch_failed", error=str(exc))
            return []

    async def _chores(self) -> None:
        """Trimming and consumer cleanup, when due."""
        if time.monotonic() >= self._next_trim_at:
            self._next_trim_at = time.monotonic() + self._settings.trim_interval_ms / 1000
            removed = await self._attempt("trim", self._trim)
            if removed:
                log.debug("stream_trimmed", removed=removed)
        if time.monotonic() >= self._next_cleanup_at:
            self._next_cleanup_at = time.monotonic() + CONSUMER_CLEANUP_INTERVAL_S
            forgotten = await self._attempt("cleanup", self._forget_dead_consumers)
            if forgotten:
                log.info("dead_consumers_removed", consumers=forgotten)

    async def _forget_dead_consumers(self) -> list[str]:
        """Remove consumers that hold nothing and were idle past the cleanup time (dead
        containers of an autoscaled fleet; a live one is recreated by its next read)."""
        idle_ms = self._settings.consumer_idle_cleanup_ms
        return await forget_consumers(self._redis, self._shard, self._group, idle_ms)

    async def _forget_self(self) -> None:
        """On a clean stop, delete this consumer if it holds nothing (best effort)."""
        try:
            idle_ms = self._settings.consumer_idle_cleanup_ms
            await forget_consumers(self._redis, self._shard, self._group, idle_ms, self._consumer)
        except Exception as exc:
            log.debug("consumer_not_removed", error=str(exc))

    async def _trim(self) -> int:
        """Drop entries every group is done with (never a pending or undelivered one)."""
        return await trim_stream(self._redis, self._shard, self._settings.stream_keep)

    async def _read_new(self) -> list[Entry]:
        if self._held.ids:  # do not wait for more with entries held back: write them
            return await self._reader.new(None)
        block_ms = self._settings.block_ms
        if self._pending_checks:  # do not block past the next re-read of own pending
            due_ms = (self._pending_checks[0] - time.monotonic()) * 1000
            block_ms = max(1, min(block_ms, int(due_ms)))
        return await self._reader.new(block_ms)

    async def _handle(self, origin: str, batch: PreparedBatch) -> None:
        """Store one batch; on giving up, its entries stay pending for a later reclaim."""
        self._batch_seq += 1
        structlog.contextvars.bind_contextvars(batch=self._batch_seq)
        started = time.perf_counter()
        store = partial(self._processor.store, batch, self._consumer)
        result: BatchResult | None = await self._attempt(origin, store)
        if result is None:
            log.warning("batch_left_pending", origin=origin, entries=len(batch.ids))
            return
        duration = time.perf_counter() - started
        self._stats.add(result)
        _observe(result, batch, duration)
        log.debug(
            "batch_processed",
            origin=origin,
            read=result.read,
            processed=result.processed,
            dead_lettered=result.dead_lettered,
            acked=result.acked,
            duration_ms=round(duration * 1000, 2),
        )

    def _summarize_if_due(self) -> None:
        if self._stats.summary_due():
            log.info("worker_progress", **self._stats.take_summary())

    async def _attempt(self, step: str, op: Callable[[], Awaitable[T]]) -> T | None:
        """``op()``, repeated while Redis fails transiently; None once given up or stopped."""
        while True:
            try:
                if self._group_missing:
                    await self._recreate_group(step)
                result = await op()
            except Exception as exc:
                self._raise_if_fatal(exc)
                if _group_gone(exc):
                    self._group_missing = True
                    self._recoveries_in_a_row += 1
                    # Gone again right after a recreation: someone keeps deleting it; slow down.
                    if self._recoveries_in_a_row > 1 and not await self._pause(
                        self._backoff.next_delay()
                    ):
                        return None
                    continue
                if isinstance(exc, TransientStoreError) or is_transient(exc):
                    metrics.REDIS_ERRORS.labels(metrics.TRANSIENT).inc()
                    delay = self._backoff.next_delay()
                    self._report_transient(step, exc, delay)
                    if await self._pause(delay):
                        continue
                    return None
                metrics.REDIS_ERRORS.labels(metrics.UNEXPECTED).inc()
                log.exception(
                    "unexpected_error",
                    step=step,
                    commands=_STEP_COMMANDS.get(step),
                    retry_in_s=UNEXPECTED_ERROR_DELAY_S,
                )
                await self._pause(UNEXPECTED_ERROR_DELAY_S)
                return None
            self._succeeded()
            return result

    def _succeeded(self) -> None:
        """A step worked: reset the backoff, beat, and after an outage plan the re-reads."""
        self._backoff.reset()
        self._heartbeat.beat()
        self._recoveries_in_a_row = 0
        if self._disturbed:
            self._disturbed = False
            now = time.monotonic()
            self._pending_checks = [now + delay for delay in PENDING_RECHECK_DELAYS_S]
            self._outage.recovered()

    def _report_transient(self, step: str, exc: Exception, delay: float) -> None:
        """One line when an outage starts, then a reminder per interval (not one per retry)."""
        self._disturbed = True
        commands = _STEP_COMMANDS.get(step)
        if isinstance(exc, OutOfMemoryError):
            # Not an outage: Redis answers, but refuses writes until memory is freed.
            log.error("redis_out_of_memory", step=step, commands=commands, retry_in_s=delay)
            return
        self._outage.failed(step, commands, exc, delay)

    async def _recreate_group(self, step: str) -> None:
        """Recreate the missing group at ID 0 (MKSTREAM) and reload the function library."""
        created = await ensure_group(self._redis, self._stream, self._group)
        await load_library(self._redis, WORKER_LIBRARY)
        self._group_missing = False
        self._reclaimer.restart()
        # Whatever this consumer had pending went with the old group; read the new one first.
        self._pending_checks = [time.monotonic()]
        if created:
            metrics.GROUP_RECREATED.inc()
        log.error(
            "consumer_group_recreated",
            stream=self._stream,
            group=self._group,
            step=step,
            created_by="this worker" if created else "another process",
            detail=(
                "the stream or its consumer group was missing (Redis restarted without "
                "persistence, failed over to an empty replica, or was flushed); the group was "
                "recreated at ID 0, so everything still in the stream will be processed"
            ),
        )

    def _raise_if_fatal(self, exc: Exception) -> None:
        fatal = configuration_error(exc, self._stream)
        if fatal is not None:
            raise fatal from exc

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds``; False (at once) if a stop is requested meanwhile."""
        try:
            await asyncio.wait_for(self.stop_requested.wait(), seconds)
        except TimeoutError:
            return True
        return False


def configuration_error(exc: Exception, stream: str) -> ConfigurationError | None:
    """What ``exc`` says is wrong with the deployment (retrying cannot help), or None."""
    if isinstance(exc, ConfigurationError):
        return exc
    if isinstance(exc, AuthenticationError | NoPermissionError):
        return ConfigurationError(f"Redis refused this worker's credentials or ACL: {exc}")
    if (tls := tls_failure(exc)) is not None:
        # Like refused credentials: retrying the same certificates cannot help.
        return ConfigurationError(f"TLS to Redis failed: {tls}")
    if isinstance(exc, MovedError):
        return ConfigurationError(
            f"Redis answered MOVED ({exc}): REDIS_URL names a Redis Cluster node, and this "
            "worker runs in single-node mode"
        )
    if isinstance(exc, ResponseError) and str(exc).startswith(_FATAL_CODES):
        return ConfigurationError(f"stream {stream!r} holds another type of value: {exc}")
    return None


def _group_gone(exc: Exception) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith(_GROUP_GONE_CODES)


def _observe(result: BatchResult, batch: PreparedBatch, duration_s: float) -> None:
    """Per-batch metrics (a handful of updates whatever the batch size)."""
    if batch.read:  # not for entries held back, counted in the batch that read them
        metrics.BATCH_SIZE.observe(batch.read)
    metrics.BATCH_DURATION.observe(duration_s)
    if result.processed:
        metrics.EVENTS_PROCESSED.inc(result.processed)
        metrics.SAMPLES_STORED.inc(2 * result.processed)
    if result.acked:
        metrics.ACKED.inc(result.acked)
    for reason, count in result.reasons.items():
        metrics.DEAD_LETTERED.labels(reason).inc(count)
    # Stream ids are <enqueue ms>-<seq>; the first entry of a batch is its oldest.
    enqueued_ms = int(batch.entries[0][0].split(b"-", 1)[0])
    metrics.EVENT_AGE.observe(max(0, now_ms() - enqueued_ms) / 1000)
