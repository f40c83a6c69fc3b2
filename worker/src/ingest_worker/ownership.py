"""Which worker runs which stream shard, with no configuration.

A shard has one owner at a time, so every series has one writer (``ingest_shared.keys``):
two workers writing one series would interleave their batches into upserts, each of which
makes RedisTimeSeries recompute the open rollup bucket. Workers beyond the number of shards
wait as standbys.

Every worker heartbeats in one sorted set; the live ones are those seen within a third of
``INGEST_CLAIM_IDLE_MS`` (at least 3 s). Shards are dealt by rendezvous hashing with bounded load
(:func:`assign`): each shard goes to the live worker with the highest score (a hash of worker
id and shard) that holds fewer than its fair share, so the shards spread evenly, every worker
computes the same deal from the same set, and a worker joining or leaving moves few shards.
Ownership is held with a lease per shard (a key in the shard's slot, with a TTL of half the
claim time, 3 to 6 s, renewed every tick): a shard is never run by two workers. A worker
giving a shard up finishes its batch in hand and releases the lease, so the next owner starts
within a tick; a dead worker's shards get a new owner when their leases expire, and that
owner's loop claims the dead consumer's entries at once (see ``reclaim``).

Each owned shard runs its own :class:`~ingest_worker.daemon.Worker` loop on its own keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import structlog

from ingest_shared.functions import hold_lease, release_lease
from ingest_shared.keys import stable_hash
from ingest_shared.redis_client import call
from ingest_shared.streams import is_transient
from ingest_worker.daemon import configuration_error
from ingest_worker.outage import Outage

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ingest_shared.keys import Shard
    from ingest_shared.redis_client import RedisClient
    from ingest_shared.settings import Settings
    from ingest_worker.daemon import Worker

TICK_S = 1.0
# A heartbeat or lease must survive a few ticks (a tick waits TICK_S plus its own round
# trips): with one tick of slack, a busy worker was seen dropping out of the live set for a
# tick and its shards dealt away and back.
MIN_LIVE_MS = MIN_LEASE_MS = 3_000
# And at most this: a dead worker's shards wait that long for a new owner, while their events
# pile up (with half of the default claim time, 30 s, a soak at 40,000 events/s saw 600,000
# events waiting after one SIGKILL).
MAX_LIVE_MS = MAX_LEASE_MS = 6_000
_TICK_COMMANDS = "ZADD, ZRANGE, FCALL ingest_lease"
log = structlog.get_logger("ingest_worker")


def live_ms(settings: Settings) -> int:
    """How long a worker counts as live after its last heartbeat."""
    return max(MIN_LIVE_MS, min(MAX_LIVE_MS, settings.claim_idle_ms // 3))


def lease_ms(settings: Settings) -> int:
    """How long a shard's lease lasts unless renewed (a dead worker's shards wait this long)."""
    return max(MIN_LEASE_MS, min(MAX_LEASE_MS, settings.claim_idle_ms // 2))


def takeover_idle_ms(settings: Settings) -> int:
    """How long a previous owner's pending entries have been idle at least when a new owner
    takes its shard over after its lease ran out (renewed a tick before it died, at worst)."""
    return lease_ms(settings) - int(TICK_S * 1000)


def _score(worker: str, shard: Shard) -> int:
    """``worker``'s rendezvous score for ``shard``: the same in every process."""
    return stable_hash(f"{worker}|{shard.tag}")


def owner_of(shard: Shard, workers: Sequence[str]) -> str | None:
    """The rendezvous winner for ``shard`` among ``workers`` (None without workers): the
    worker :func:`assign` tries first."""
    return max(workers, key=lambda worker: _score(worker, shard), default=None)


def assign(shards: Sequence[Shard], workers: Sequence[str]) -> dict[str, str]:
    """Each shard's owner (by tag) among ``workers``: rendezvous hashing with bounded load.

    In shard order, each shard goes to its highest-scoring worker that holds fewer than
    ``ceil(len(shards) / len(workers))`` shards: no worker gets more than its fair share
    (plain rendezvous hashing gave one of two workers 6 of 8 shards), and the result depends
    only on the set of workers, so every worker computes the same one.
    """
    if not workers:
        return {}
    cap = -(-len(shards) // len(workers))
    held = dict.fromkeys(workers, 0)
    owners: dict[str, str] = {}
    for shard in shards:
        ranked = sorted(workers, key=lambda worker: _score(worker, shard), reverse=True)
        for worker in ranked:
            if held[worker] < cap:
                owners[shard.tag] = worker
                held[worker] += 1
                break
    return owners


class ShardOwnership:
    """Runs one Worker per shard this process wins; ``await run()`` until ``stop()``."""

    def __init__(
        self,
        redis: RedisClient,
        settings: Settings,
        make_worker: Callable[[Shard], Worker],
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:
        self._redis = redis
        self._keys = settings.keys
        self._me = settings.consumer_name
        self._make_worker = make_worker
        self._on_tick = on_tick
        self._live_ms = live_ms(settings)
        self._lease_ms = lease_ms(settings)
        self._running: dict[str, tuple[Worker, asyncio.Task[None]]] = {}
        self._outage = Outage()
        self.stop_requested = asyncio.Event()

    def stop(self) -> None:
        """Stop every shard loop (each finishes its batch in hand) and give the shards up."""
        self.stop_requested.set()
        for worker, _ in self._running.values():
            worker.stop()

    @property
    def owned(self) -> list[int]:
        """The indexes of the shards this process runs now."""
        by_tag = {shard.tag: shard.index for shard in self._keys.shards}
        return sorted(by_tag[tag] for tag in self._running)

    async def run(self) -> None:
        """Heartbeat, take and give up shards every tick; raise what a shard loop raised."""
        try:
            while not self.stop_requested.is_set():
                try:
                    await self._tick()
                except Exception as exc:
                    fatal = configuration_error(exc, self._keys.workers)
                    if fatal is not None:
                        raise fatal from exc
                    if not is_transient(exc):
                        raise
                    # Leases run out meanwhile if Redis stays away; the loops back off on
                    # their own, and the next tick takes the shards back.
                    self._outage.failed("ownership", _TICK_COMMANDS, exc, TICK_S)
                else:
                    self._outage.recovered()
                self._raise_if_a_loop_failed()
                self._on_tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_requested.wait(), TICK_S)
        finally:
            await self._stop_all()

    async def _tick(self) -> None:
        now = int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(self._keys.workers, {self._me: now})
        pipe.zremrangebyscore(self._keys.workers, "-inf", now - self._live_ms)
        pipe.zrange(self._keys.workers, 0, -1)
        *_, members = await pipe.execute()
        live = sorted(member.decode() for member in members)
        owners = assign(self._keys.shards, live)
        for shard in self._keys.shards:
            wanted = owners.get(shard.tag) == self._me
            running = shard.tag in self._running
            if wanted:
                held = await hold_lease(self._redis, shard.lease(), self._me, self._lease_ms)
                if held and not running:
                    self._start(shard)
                elif not held and running:
                    log.warning("shard_lease_lost", shard=shard.index)
                    await self._stop(shard)
            elif running:
                await self._stop(shard)

    def _start(self, shard: Shard) -> None:
        worker = self._make_worker(shard)
        task = asyncio.create_task(worker.run(), name=f"ingest-worker-shard-{shard.index}")
        self._running[shard.tag] = (worker, task)
        log.info("shard_taken", shard=shard.index, stream=shard.stream)

    async def _stop(self, shard: Shard) -> None:
        """Let the shard's loop finish its batch in hand, then give the lease up."""
        worker, task = self._running.pop(shard.tag)
        worker.stop()
        await asyncio.wait({task})
        with contextlib.suppress(Exception):
            await release_lease(self._redis, shard.lease(), self._me)
        log.info("shard_given_up", shard=shard.index)

    async def _stop_all(self) -> None:
        by_tag = {shard.tag: shard for shard in self._keys.shards}
        for tag in list(self._running):
            await self._stop(by_tag[tag])
        with contextlib.suppress(Exception):
            await call(self._redis, "ZREM", self._keys.workers, self._me)

    def _raise_if_a_loop_failed(self) -> None:
        for worker_task in self._running.values():
            task = worker_task[1]
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
